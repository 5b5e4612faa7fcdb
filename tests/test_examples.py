"""The examples run (in quick mode) and say something sane."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_anomaly_detection_quick(capsys: pytest.CaptureFixture[str]) -> None:
    results = load_example("anomaly_detection").main(["--quick"])
    printed = capsys.readouterr().out
    for name in ("realnvp", "isolation forest", "gaussian", "LOF", "ROC AUC", "AP"):
        assert name in printed
    assert "±" in printed and "default threshold" in printed
    assert set(results["seed"]) == {0, 1}
    assert (results["roc_auc"] > 0.8).all(), results
    assert (results["ap"] > 0.8).all(), results
    flow = results[results["model"] == "realnvp"]
    assert (flow["flag_anomaly"] > flow["flag_normal"]).all()
