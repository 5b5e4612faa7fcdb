"""Test helpers: read a training checkpoint's metadata; press Ctrl-C once a run reaches a step."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from safetensors import safe_open

from realnvp.training.checkpoint import CHECKPOINT_FILE


def checkpoint_meta(folder: Path) -> dict:
    """The ``checkpoint`` metadata (step, history, ...) of ``folder``'s checkpoint."""
    with safe_open(folder / CHECKPOINT_FILE, "pt") as f:
        return json.loads(f.metadata()["checkpoint"])


def sigint_at_step(folder: Path, step: int, timeout: float = 60) -> threading.Thread:
    """Send this process a SIGINT (a terminal's Ctrl-C) once the checkpoint in ``folder``
    has passed ``step``."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if checkpoint_meta(folder)["step"] >= step:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
