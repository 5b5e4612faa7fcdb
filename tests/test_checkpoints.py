"""Crash-safe checkpoints: atomic writes, exact resume, SIGKILL at random moments, Ctrl-C.

The library-level tests fork the (already imported) test process, so twenty kill-and-resume
trials cost well under a second each; the command-line test SIGKILLs a real
``python -m realnvp`` process and sends this process a real SIGINT.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import realnvp
import realnvp.cli
from checkpoint_watch import checkpoint_meta, sigint_at_step
from realnvp.datasets import get_toy
from realnvp.io import ModelFileError
from realnvp.training.checkpoint import CHECKPOINT_FILE

KW = {"steps": 60, "batch_size": 32, "eval_every": 5, "checkpoint_every": 5, "seed": 0,
      "progress": False}


def _data() -> torch.Tensor:
    x, _ = get_toy("moons").sample(400, seed=0)
    return x


def _flow() -> realnvp.Flow:
    return realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))  # seed 0: the same weights each time


def _same_weights(a: realnvp.Flow, b: realnvp.Flow) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _reference(tmp_path: Path) -> tuple[realnvp.Flow, realnvp.History, float]:
    flow, folder = _flow(), tmp_path / "reference"
    folder.mkdir()
    started = time.perf_counter()
    history = realnvp.fit(flow, _data(), checkpoint_dir=folder, **KW)
    return flow, history, time.perf_counter() - started


def _same_outcome(h1: realnvp.History, h2: realnvp.History) -> None:
    assert (h2.best_step, h2.best_val_nll, h2.skipped_steps) == (
        h1.best_step, h1.best_val_nll, h1.skipped_steps)
    assert [r["val_nll"] for r in h2.records] == [r["val_nll"] for r in h1.records]


# --- what a checkpoint holds, and how it is written ---


def test_a_clean_run_leaves_one_complete_checkpoint_and_no_temporary_files(
    tmp_path: Path,
) -> None:
    flow, history, _ = _reference(tmp_path)
    folder = tmp_path / "reference"
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE]
    meta = checkpoint_meta(folder)
    assert meta["step"] == KW["steps"]
    assert meta["history"]["best_step"] == history.best_step
    assert meta["has_best"] and meta["scheduler"]["last_epoch"] == KW["steps"]
    tensors = load_file(folder / CHECKPOINT_FILE)
    kinds = {k.split(".")[0] for k in tensors}
    assert kinds == {"model", "best", "optim", "rng", "batches"}
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())
    # A checkpoint opens as a model, and gives the restored (best) weights.
    assert _same_weights(realnvp.load(folder), flow)


def test_a_checkpoint_is_written_every_n_steps(tmp_path: Path) -> None:
    seen: dict[int, int] = {}

    def watch(step: int, flow: realnvp.Flow) -> None:  # runs before that step's checkpoint
        if (tmp_path / CHECKPOINT_FILE).exists():
            seen[step] = checkpoint_meta(tmp_path)["step"]

    realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, callbacks=[watch],
                **{**KW, "steps": 20, "checkpoint_every": 5})
    # A step-0 checkpoint is written before training, so a run is resumable at once.
    assert seen == {s: 5 * ((s - 1) // 5) for s in range(1, 21)}


def test_checkpoint_every_need_not_be_a_multiple_of_eval_every(tmp_path: Path) -> None:
    seen: set[int] = set()

    def watch(step: int, flow: realnvp.Flow) -> None:
        if (tmp_path / CHECKPOINT_FILE).exists():
            seen.add(checkpoint_meta(tmp_path)["step"])

    realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, callbacks=[watch],
                **{**KW, "steps": 20, "eval_every": 10, "checkpoint_every": 4})
    assert seen == {0, 4, 8, 12, 16}


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, **{**KW, "steps": 10})
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, **{**KW, "steps": 10})
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert _leftovers(tmp_path) == []


# --- resume ---


@pytest.mark.parametrize("cut", [5, 25, 55])
def test_resume_from_a_periodic_checkpoint_ends_with_the_same_weights(
    tmp_path: Path, cut: int
) -> None:
    reference, ref_history, _ = _reference(tmp_path)
    run, snapshot = tmp_path / "run", tmp_path / "snapshot"
    run.mkdir(), snapshot.mkdir()

    def freeze(step: int, flow: realnvp.Flow) -> None:  # the checkpoint of step `cut`
        if step == cut + 1:
            shutil.copy(run / CHECKPOINT_FILE, snapshot / CHECKPOINT_FILE)

    realnvp.fit(_flow(), _data(), checkpoint_dir=run, callbacks=[freeze], **KW)
    assert checkpoint_meta(snapshot)["step"] == cut
    resumed = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,), seed=99)  # all of it restored
    history = realnvp.fit(resumed, _data(), checkpoint_dir=snapshot, resume=True, **KW)
    assert _same_weights(resumed, reference)
    _same_outcome(ref_history, history)
    assert history.stopped == f"completed {KW['steps']} steps"
    assert _leftovers(snapshot) == []


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no checkpoint to resume from"):
        realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, resume=True, **KW)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "other-model"])
def test_resume_from_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, **{**KW, "steps": 5})
    path = tmp_path / CHECKPOINT_FILE
    data = path.read_bytes()
    if damage == "other-model":
        flow = realnvp.RealNVP(dim=2, n_layers=3, hidden=(8,))
        with pytest.raises(ModelFileError, match="does not match this model"):
            realnvp.fit(flow, _data(), checkpoint_dir=tmp_path, resume=True, **KW)
        return
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                      "garbage": os.urandom(len(data))}[damage])
    with pytest.raises(ModelFileError, match="corrupt checkpoint") as info:
        realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, resume=True, **KW)
    assert CHECKPOINT_FILE in str(info.value)


def test_resume_removes_the_temporary_file_a_kill_left_behind(tmp_path: Path) -> None:
    realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, **{**KW, "steps": 10})
    stale = tmp_path / f".{CHECKPOINT_FILE}.k1ll3d.tmp"
    stale.write_bytes((tmp_path / CHECKPOINT_FILE).read_bytes()[:100])
    realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, resume=True, **KW)
    assert _leftovers(tmp_path) == []


# --- Ctrl-C (library) ---


def _interrupt_at(step_to_interrupt: int):
    def callback(step: int, flow: realnvp.Flow) -> None:
        if step == step_to_interrupt:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C would

    return callback


def test_ctrl_c_saves_a_loadable_checkpoint_then_reraises(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, callbacks=[_interrupt_at(23)],
                    **KW)
    meta = checkpoint_meta(tmp_path)
    assert 22 <= meta["step"] <= 23  # the last step completed (not a periodic checkpoint)
    assert meta["history"]["stopped"].startswith("interrupted at step")
    assert realnvp.load(tmp_path).dim == 2
    assert _leftovers(tmp_path) == []


def test_resume_after_ctrl_c_ends_with_the_same_weights(tmp_path: Path) -> None:
    reference, ref_history, _ = _reference(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(KeyboardInterrupt):
        realnvp.fit(_flow(), _data(), checkpoint_dir=run, callbacks=[_interrupt_at(23)], **KW)
    resumed = _flow()
    history = realnvp.fit(resumed, _data(), checkpoint_dir=run, resume=True, **KW)
    assert history.stopped == f"completed {KW['steps']} steps"
    assert _same_weights(resumed, reference)
    _same_outcome(ref_history, history)


# --- SIGKILL at random moments (library, forked) ---

KILL_KW = {**KW, "steps": 30, "eval_every": 3, "checkpoint_every": 3}


def _train_in_child(folder: Path) -> int:
    """Fork a process that trains into ``folder``; returns once it has started."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: train, never return into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            os.write(write, b"x")
            realnvp.fit(_flow(), _data(), checkpoint_dir=folder, **KILL_KW)
            code = 0
        except BaseException:  # noqa: BLE001 - say why in the test's output, then exit 1
            traceback.print_exc()
        finally:
            os._exit(code)
    os.read(read, 1)
    os.close(read), os.close(write)
    return pid


@pytest.mark.usefixtures("forkable")
def test_sigkill_at_random_moments_always_leaves_a_run_that_loads_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    """SIGKILL a training process at a random moment, load, resume, compare: until 10 kills
    landed mid-run (at most 40 trials; load from other processes moves the run's duration,
    so some kills land before the first checkpoint or after the end)."""
    reference = _flow()
    realnvp.fit(reference, _data(), **KILL_KW)  # warm: the first fit in a process is slower
    durations = []
    for timed in range(2):  # the quicker of two runs: a slow first one would put kills too late
        folder = tmp_path / f"timed{timed}"
        folder.mkdir()
        started = time.perf_counter()
        _, status = os.waitpid(_train_in_child(folder), 0)
        durations.append(time.perf_counter() - started)
        assert os.waitstatus_to_exitcode(status) == 0  # left alone, the child trains to the end
    seconds = min(durations)
    rng = random.Random(20240607)
    outcomes = {"resumed": 0, "no checkpoint yet": 0, "finished": 0, "temporary file left": 0}
    for trial in range(40):
        if outcomes["resumed"] >= 10:
            break
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        pid = _train_in_child(folder)
        time.sleep(rng.uniform(0.0, 1.1 * seconds))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # A kill mid-write may leave the temporary file: a dot-file, never the checkpoint.
        leftovers = _leftovers(folder)
        assert all(name.startswith(f".{CHECKPOINT_FILE}.") for name in leftovers)
        outcomes["temporary file left"] += bool(leftovers)
        if not (folder / CHECKPOINT_FILE).exists():
            outcomes["no checkpoint yet"] += 1
            with pytest.raises(ModelFileError, match="no checkpoint"):
                realnvp.fit(_flow(), _data(), checkpoint_dir=folder, resume=True, **KILL_KW)
            continue
        step = checkpoint_meta(folder)["step"]
        assert step % KILL_KW["checkpoint_every"] == 0
        assert realnvp.load(folder).dim == 2  # the latest complete checkpoint loads
        resumed = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,), seed=99)
        realnvp.fit(resumed, _data(), checkpoint_dir=folder, resume=True, **KILL_KW)
        assert _same_weights(resumed, reference), f"trial {trial}: killed after step {step}"
        outcomes["finished" if step == KILL_KW["steps"] else "resumed"] += 1
    print(outcomes)
    assert outcomes["resumed"] >= 10, outcomes  # most kills land mid-run


# --- NaN in a batch ---


def test_a_nan_in_a_training_batch_is_skipped_naming_the_step_and_never_checkpointed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = _data()

    def poison(step: int, flow: realnvp.Flow) -> None:  # one row: one batch an epoch
        if step == 20:
            x[7, 0] = torch.nan

    def check_checkpoint(step: int, flow: realnvp.Flow | None) -> None:
        if (tmp_path / CHECKPOINT_FILE).exists():
            tensors = load_file(tmp_path / CHECKPOINT_FILE)
            assert all(bool(torch.isfinite(v).all()) for v in tensors.values()
                       if v.is_floating_point())

    # val_fraction=0: fit trains on ``x`` itself, so the poison reaches the batches.
    history = realnvp.fit(_flow(), x, checkpoint_dir=tmp_path, val_fraction=0.0,
                          callbacks=[poison, check_checkpoint], **{**KW, "steps": 100})
    err = capsys.readouterr().err
    assert history.skipped_steps and min(history.skipped_steps) > 20
    for step in history.skipped_steps:
        assert f"step {step}: non-finite loss (nan); step skipped" in err
    assert history.stopped == "completed 100 steps"
    check_checkpoint(0, None)
    assert realnvp.load(tmp_path).dim == 2


def test_nan_every_step_stops_with_an_error_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    x = _data()

    def poison(step: int, flow: realnvp.Flow) -> None:
        if step == 10:
            x[:, 0] = torch.nan

    with pytest.raises(realnvp.training.NonFiniteLossError, match=r"step 15: 5 non-finite"):
        realnvp.fit(_flow(), x, checkpoint_dir=tmp_path, val_fraction=0.0, max_bad_steps=5,
                    callbacks=[poison], **KW)
    assert checkpoint_meta(tmp_path)["step"] == 10
    assert realnvp.load(tmp_path).dim == 2


def test_weights_gone_nan_are_never_checkpointed(tmp_path: Path) -> None:
    def corrupt(step: int, flow: realnvp.Flow) -> None:  # as an overflowing update would
        if step == 10:
            with torch.no_grad():
                flow.bijection[1].conditioner[0].weight[0, 0] = torch.nan

    with pytest.raises(realnvp.training.NonFiniteLossError, match="step 10"):
        realnvp.fit(_flow(), _data(), checkpoint_dir=tmp_path, callbacks=[corrupt], **KW)
    assert checkpoint_meta(tmp_path)["step"] == 5


# --- the command line: seeding, SIGKILL, Ctrl-C, resume ---


def test_the_same_seed_builds_the_same_initial_flow() -> None:
    from realnvp import runs
    from realnvp.training import TrainConfig

    config = TrainConfig(layers=2, hidden=(8,), seed=3)
    torch.manual_seed(1)
    first = runs.build_flow(config, 2)
    torch.manual_seed(2)
    assert _same_weights(runs.build_flow(config, 2), first)


CLI_TRAIN = ["train", "--config", "fast.toml", "--data", "moons", "--n-train", "300",
             "--steps", "400", "--layers", "2", "--hidden", "8", "--batch-size", "32", "--seed",
             "3", "--device", "cpu", "--checkpoint-every", "20", "--no-plots", "--quiet"]


def _cli(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "realnvp", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / CHECKPOINT_FILE).exists():
            try:
                if checkpoint_meta(run)["step"] >= step:
                    return
            except (OSError, ValueError, KeyError):
                pass  # replaced while we read it: look again
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"{run}: no checkpoint of step {step} within {timeout} s")


def test_cli_ctrl_c_then_sigkill_then_resume_finishes_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One run: Ctrl-C after step 100, resume, SIGKILL after step 200, resume to the end.

    ``main`` runs in this process where a real process is not needed (Ctrl-C is a real
    SIGINT, delivered to this process); the SIGKILLed resume is a real ``python -m realnvp``.
    Each interrupted state must load; the finished run must hold the weights of an
    uninterrupted run.
    """
    monkeypatch.chdir(tmp_path)
    torch.set_default_dtype(torch.float32)  # as in a fresh process (conftest sets float64)
    (tmp_path / "fast.toml").write_text("eval_every = 10\n")
    run = tmp_path / "run"
    watcher = sigint_at_step(run, 100)
    with pytest.raises(SystemExit) as info:
        realnvp.cli.main([*CLI_TRAIN, "--out", "run"])
    watcher.join(timeout=60)
    err = capsys.readouterr().err
    assert info.value.code == 130, err
    assert "Resume with: realnvp train --resume run" in err
    assert realnvp.load(run).dim == 2
    assert _leftovers(run) == []
    resume = ["train", "--resume", "run", "--no-plots", "--quiet", "--checkpoint-every", "20"]
    killed = _cli(tmp_path, *resume)
    _wait_for_step(run, 200, killed)
    time.sleep(random.Random(1).uniform(0, 0.2))
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert realnvp.load(run).dim == 2
    assert not (run / "model.safetensors").exists()
    realnvp.cli.main(resume)  # returns on success
    err = capsys.readouterr().err
    realnvp.cli.main([*CLI_TRAIN, "--out", "reference"])
    assert realnvp.load(run).dim == 2
    assert _leftovers(tmp_path / "reference") == []
    expected = load_file(tmp_path / "reference" / "model.safetensors")
    got = load_file(run / "model.safetensors")
    assert got.keys() == expected.keys()
    assert "completed 400 steps" in err
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_resuming_an_early_stopped_run_changes_nothing(tmp_path: Path) -> None:
    kw = {**KW, "steps": 300, "lr": 5e-2, "patience": 2}
    flow = _flow()
    history = realnvp.fit(flow, _data(), checkpoint_dir=tmp_path, **kw)
    assert history.stopped.startswith("early stopping")
    resumed = _flow()
    again = realnvp.fit(resumed, _data(), checkpoint_dir=tmp_path, resume=True, **kw)
    assert again.stopped == history.stopped
    assert len(again.records) == len(history.records)
    assert _same_weights(resumed, flow)


def test_ctrl_c_during_a_resumed_run_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.set_default_dtype(torch.float32)
    (tmp_path / "fast.toml").write_text("eval_every = 10\n")
    args = [*CLI_TRAIN[:CLI_TRAIN.index("--steps")], "--steps", "60",
            *CLI_TRAIN[CLI_TRAIN.index("--steps") + 2:], "--out", "run"]
    realnvp.cli.main(args)
    watcher = sigint_at_step(tmp_path / "run", 100)
    with pytest.raises(SystemExit) as info:
        realnvp.cli.main(["train", "--resume", "run", "--steps", "100000", "--no-plots",
                          "--quiet", "--checkpoint-every", "20"])
    watcher.join(timeout=60)
    err = capsys.readouterr().err
    assert info.value.code == 130
    assert "Resume with: realnvp train --resume run" in err
    assert realnvp.load(tmp_path / "run").dim == 2
