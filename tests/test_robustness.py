"""Bad input everywhere: every command and public function says what is wrong in one line.

Each case runs ``realnvp.cli.main`` (what the console script and ``python -m realnvp`` call)
in this process, against a folder of deliberately bad files, and checks: exit status 2, one
``Error: ...`` line naming the problem, no traceback, nothing on stdout, and not a byte
written (no run folder, no partial output, no ``*.tmp``). A few cases run as real processes
too. The library functions behind the commands get the same table.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import realnvp
import realnvp.cli
from realnvp.datasets import get_toy
from realnvp.datasets.files import TableError, iter_table_chunks, load_table, save_table
from realnvp.io import ModelFileError

TINY = ["--steps", "5", "--layers", "2", "--hidden", "8", "--n-train", "200", "--no-plots",
        "--quiet", "--device", "cpu"]
TRAIN = ["train", *TINY]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _late_nan() -> str:
    rows = "".join(f"{i},{i % 7}\n" for i in range(50))
    return "x,y\n" + rows + "nan,1\n"


FILES: dict[str, str | bytes] = {
    "ok.csv": "x,y\n1,2\n4,5\n7,8.5\n0,1\n",
    "empty.csv": "",
    "header.csv": "x,y\n",
    "text.csv": "x,y\n1,a\n2,b\n",
    "nan.csv": "x,y\n1,2\nnan,3\n",
    "inf.csv": "x,y\n1,2\n3,-inf\n",
    "three.csv": "x,y,z\n1,2,3\n4,5,6\n",
    "ragged.csv": "x,y\n1,2\n3,4,5\n6,7\n",
    "pipe.csv": "x|y\n1|2\n3|4\n",
    "euro.csv": "x;y\n1,5;2,5\n3,5;4,5\n",
    "mixed.csv": "x,y\n1,2\n3,four\n5,6\n",
    "bom.csv": "\ufeffx,y\n1,2\n4,5\n7,8.5\n0,1\n",
    "huge.csv": "x,y\n" + "".join(f"{s}1e300,{i}\n" for i in range(40) for s in "+-"[i % 2]),
    "overflow.csv": "x,y\n1e400,2\n3,4\n",
    "dup.csv": "x,x\n1,2\n3,4\n",
    "late-nan.csv": _late_nan(),
    "afile": "a regular file, not a folder\n",
    "empty.safetensors": b"",
    "pickle.safetensors": pickle.dumps(_Evil()),
    "bad.toml": "steps = [\n",
    "unknown.toml": "stepz = 3\n",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (moons, 5 steps), copied into each test that needs one."""
    folder = tmp_path_factory.mktemp("trained")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # as in a fresh process
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        realnvp.cli.main([*TRAIN, "--out", "run"])
    finally:
        os.chdir(cwd)
        torch.set_default_dtype(previous)
    return folder / "run"


@pytest.fixture
def workdir(tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path holding the bad files, a directory ``adir.csv`` and a trained ``run``."""
    for name, content in FILES.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    (tmp_path / "adir.csv").mkdir()
    shutil.copytree(trained, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    torch.set_default_dtype(torch.float32)  # as in a fresh process; conftest restores
    return tmp_path


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder``, with its size and modification time."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        out[str(path.relative_to(folder))] = (st.st_size if path.is_file() else -1,
                                              st.st_mtime_ns)
    return out


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        realnvp.cli.main(args)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _assert_one_clear_line(code: int, out: str, err: str, match: str) -> None:
    import re

    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, err
    usage = [line for line in lines if line.startswith(("Usage: ", "Try "))]
    assert len(lines) == 1 + len(usage), err  # click's usage hint is the only extra text
    assert re.search(match, errors[0]), errors[0]


# ----- the table: (id, argv, what the error line must say) ---------------------------------


def case(id: str, *argv: str, match: str) -> object:
    return pytest.param(list(argv), match, id=id)


NO_CUDA = not torch.cuda.is_available()

CLI_CASES = [
    # missing file
    case("train-missing-data", *TRAIN, "--data", "missing.csv",
         match=r"missing\.csv: no such file"),
    case("score-missing-file", "score", "run", "missing.csv", match=r"missing\.csv: no such file"),
    case("evaluate-missing-data", "evaluate", "run", "--data", "missing.csv", "--no-baselines",
         match=r"missing\.csv: no such file"),
    case("sample-missing-model", "sample", "nope", match=r"nope: no such model file"),
    case("score-missing-model", "score", "nope", "ok.csv", match=r"nope: no such model file"),
    case("evaluate-missing-run", "evaluate", "nope", match=r"nope: no such run folder"),
    case("plot-missing-run", "plot", "nope", match=r"nope: no such run folder"),
    case("resume-missing-run", "train", "--resume", "nope", match=r"nope: no such run folder"),
    case("train-missing-config", *TRAIN, "--config", "missing.toml",
         match=r"missing\.toml: no such config file"),
    # empty file
    case("train-empty", *TRAIN, "--data", "empty.csv", match=r"empty\.csv: empty file"),
    case("score-empty", "score", "run", "empty.csv", match=r"empty\.csv: empty file"),
    case("evaluate-empty", "evaluate", "run", "--data", "empty.csv", "--no-baselines",
         match=r"empty\.csv: empty file"),
    case("sample-empty-model", "sample", "empty.safetensors",
         match=r"empty\.safetensors: empty file"),
    case("train-bad-toml", *TRAIN, "--config", "bad.toml", match=r"bad\.toml: invalid TOML"),
    case("train-unknown-toml-key", *TRAIN, "--config", "unknown.toml",
         match=r"unknown\.toml: unknown option\(s\) stepz"),
    # header only
    case("train-header-only", *TRAIN, "--data", "header.csv", match=r"header\.csv: header only"),
    case("score-header-only", "score", "run", "header.csv", match=r"header\.csv: header only"),
    # non-numeric column
    case("train-text-column", *TRAIN, "--data", "text.csv",
         match=r"text\.csv: column 'y' has a non-numeric value 'a' at line 2"),
    case("score-text-column", "score", "run", "text.csv",
         match=r"text\.csv: column 'y' has a non-numeric value 'a' at line 2"),
    # NaN or inf
    case("train-nan", *TRAIN, "--data", "nan.csv", match=r"nan\.csv: NaN in column 'x' at line 3"),
    case("score-inf", "score", "run", "inf.csv",
         match=r"inf\.csv: infinite value in column 'y' at line 3"),
    case("evaluate-nan", "evaluate", "run", "--data", "nan.csv", "--no-baselines",
         match=r"nan\.csv: NaN in column 'x' at line 3"),
    case("score-nan-in-a-late-chunk", "score", "run", "late-nan.csv", "--chunk-rows", "10",
         "--out", "scores.csv", match=r"late-nan\.csv: NaN in column 'x' at line 52"),
    # wrong number of columns
    case("score-three-columns", "score", "run", "three.csv",
         match=r"three\.csv: expected 2 columns; got 3"),
    case("evaluate-three-columns", "evaluate", "run", "--data", "three.csv", "--no-baselines",
         match=r"three\.csv: expected 2 columns; got 3"),
    case("train-ragged-rows", *TRAIN, "--data", "ragged.csv",
         match=r"ragged\.csv: line 3 has 3 fields; expected 2"),
    case("train-no-such-column", *TRAIN, "--data", "three.csv", "--columns", "x,q",
         match=r"no column 'q' in three\.csv \(columns: x, y, z\)"),
    case("train-columns-on-a-toy", *TRAIN, "--columns", "x", match=r"--columns applies to files"),
    # unknown toy
    case("train-unknown-toy", *TRAIN, "--data", "nosuchtoy", match=r"Unknown toy 'nosuchtoy'"),
    case("evaluate-unknown-toy", "evaluate", "run", "--data", "nosuchtoy", "--no-baselines",
         match=r"Unknown toy 'nosuchtoy'"),
    # zero or negative counts
    case("train-zero-steps", *TRAIN, "--steps", "0", match=r"Expected steps >= 1; got 0"),
    case("train-negative-steps", *TRAIN, "--steps", "-5", match=r"Expected steps >= 1; got -5"),
    case("train-zero-batch", *TRAIN, "--batch-size", "0", match=r"Expected batch_size >= 1"),
    case("train-zero-layers", *TRAIN, "--layers", "0", match=r"Expected layers >= 1"),
    case("train-negative-lr", *TRAIN, "--lr", "-1", match=r"Expected lr > 0"),
    case("train-zero-checkpoint-every", *TRAIN, "--checkpoint-every", "0",
         match=r"Expected --checkpoint-every >= 1"),
    case("resume-zero-steps", "train", "--resume", "run", "--steps", "0",
         match=r"Expected steps >= 1; got 0"),
    case("sample-zero", "sample", "run", "-n", "0", match=r"Expected -n >= 1; got 0"),
    case("sample-negative", "sample", "run", "-n", "-3", match=r"Expected -n >= 1; got -3"),
    case("score-zero-chunk", "score", "run", "ok.csv", "--chunk-rows", "0",
         match=r"Expected --chunk-rows >= 1"),
    case("score-out-parquet", "score", "run", "ok.csv", "--out", "scored.parquet",
         match=r"scored\.parquet: score streams its rows out as CSV"),
    case("sample-out-proc", "sample", "run", "-n", "3", "--out", "/proc/x.csv",
         match=r"/proc/x\.csv: cannot write there"),
    case("train-hidden-text", "train", *TINY[:4], "--hidden", "abc", "--out", "h",
         match=r"hidden expects comma-separated whole numbers such as 64,64; got 'abc'"),
    case("score-bad-contamination", "score", "run", "ok.csv", "--contamination", "0",
         match=r"Expected 0 < --contamination < 0\.5"),
    case("evaluate-zero-test-rows", "evaluate", "run", "--n-test", "0", "--no-baselines",
         match=r"Expected n >= 1; got 0"),
    # unknown device
    case("train-unknown-device", *TRAIN, "--device", "tpu", match=r"Unknown device 'tpu'"),
    case("resume-unknown-device", "train", "--resume", "run", "--device", "tpu",
         match=r"Unknown device 'tpu'"),
    *([case("train-cuda-without-cuda", *TRAIN, "--device", "cuda",
            match=r"CUDA is not available")] if NO_CUDA else []),
    # existing run folder
    case("train-existing-run", *TRAIN, "--out", "run",
         match=r"run: run folder already exists; use --force"),
    # wrong delimiter
    case("train-pipe-delimited", *TRAIN, "--data", "pipe.csv",
         match=r"pipe\.csv: column 'x\|y' has a non-numeric value '1\|2' at line 2"),
    case("score-pipe-delimited", "score", "run", "pipe.csv",
         match=r"pipe\.csv: expected 2 columns; got 1"),
    case("train-decimal-commas", *TRAIN, "--data", "euro.csv",
         match=r"euro\.csv: .*'1,5' \(use '\.' for decimals"),
    # mixed types
    case("train-mixed-types", *TRAIN, "--data", "mixed.csv",
         match=r"mixed\.csv: column 'y' has a non-numeric value 'four' at line 3"),
    case("score-mixed-types", "score", "run", "mixed.csv",
         match=r"mixed\.csv: column 'y' has a non-numeric value 'four' at line 3"),
    # huge values
    case("train-overflowing-number", *TRAIN, "--data", "overflow.csv",
         match=r"overflow\.csv: infinite value in column 'x' at line 2"),
    case("train-huge-values", *TRAIN, "--data", "huge.csv", match=r"huge\.csv|1e\+?300|range"),
    # duplicate columns
    case("train-duplicate-columns", *TRAIN, "--data", "dup.csv",
         match=r"dup\.csv: duplicate column names: 'x'"),
    case("score-duplicate-columns", "score", "run", "dup.csv",
         match=r"dup\.csv: duplicate column names: 'x'"),
    # a directory instead of a file
    case("train-data-is-a-folder", *TRAIN, "--data", "adir.csv",
         match=r"adir\.csv: is a directory"),
    case("score-file-is-a-folder", "score", "run", "adir.csv", match=r"adir\.csv: is a directory"),
    case("sample-model-is-a-plain-folder", "sample", "adir.csv",
         match=r"adir\.csv/model\.safetensors: no such model file"),
    case("evaluate-run-is-a-plain-folder", "evaluate", "adir.csv",
         match=r"adir\.csv: not a run folder"),
    case("sample-out-is-a-folder", "sample", "run", "--out", "adir.csv",
         match=r"adir\.csv: is a directory"),
    case("score-out-is-a-folder", "score", "run", "ok.csv", "--out", "adir.csv",
         match=r"adir\.csv: is a directory"),
    case("train-out-is-a-file", *TRAIN, "--out", "afile", match=r"afile: exists and is not a"),
    case("train-config-is-a-folder", *TRAIN, "--config", "adir.csv",
         match=r"'adir\.csv' is a directory"),
    case("sample-model-is-a-csv", "sample", "ok.csv", match=r"ok\.csv: not a valid safetensors"),
    # nowhere to write the output (as root, a path through a regular file still fails)
    case("train-out-inside-a-file", *TRAIN, "--out", "afile/run", match=r"afile: not a folder"),
    case("sample-out-inside-a-file", "sample", "run", "--out", "afile/s.csv",
         match=r"afile: no such folder"),
    case("score-out-inside-a-file", "score", "run", "ok.csv", "--out", "afile/s.csv",
         match=r"afile: no such folder"),
    case("sample-out-unknown-type", "sample", "run", "--out", "s.xlsx",
         match=r"s\.xlsx: unsupported file type '\.xlsx'"),
    # a model that could run code
    case("sample-pickle", "sample", "pickle.safetensors",
         match=r"pickle\.safetensors: looks like a pickle"),
    case("score-pickle", "score", "pickle.safetensors", "ok.csv",
         match=r"pickle\.safetensors: looks like a pickle"),
]


@pytest.mark.parametrize(("argv", "match"), CLI_CASES)
def test_every_command_rejects_bad_input_in_one_line_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    before = _tree(workdir)
    code, out, err = _main(argv, capsys)
    _assert_one_clear_line(code, out, err, match)
    assert _tree(workdir) == before
    assert not (workdir / "pwned").exists()


def test_the_table_covers_every_command() -> None:
    commands = {p.values[0][0] for p in CLI_CASES} | {"datasets"}  # datasets takes no input
    assert commands == set(realnvp.cli.cli.commands)


# ----- nowhere to write: permission denied and a full disk, simulated (tests run as root) --


def _deny_writes_below(folder: Path, monkeypatch: pytest.MonkeyPatch, errno: int) -> None:
    """Make every atomic write below ``folder`` fail as a read-only or full disk would."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own name
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno, os.strerror(errno), str(Path(dir) / kwargs.get("prefix", "")))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


WRITERS = [
    pytest.param([*TRAIN, "--out", "new"], id="train"),
    pytest.param(["sample", "run", "-n", "5", "--out", "s.csv"], id="sample"),
    pytest.param(["score", "run", "ok.csv", "--out", "s.csv"], id="score"),
    pytest.param(["evaluate", "run", "--no-baselines"], id="evaluate"),
]


@pytest.mark.parametrize("errno", [13, 28], ids=["permission-denied", "disk-full"])
@pytest.mark.parametrize("argv", WRITERS)
def test_a_write_that_fails_is_one_line_and_leaves_nothing_behind(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    argv: list[str], errno: int,
) -> None:
    before = _tree(workdir)
    _deny_writes_below(workdir, monkeypatch, errno)
    code, out, err = _main(argv, capsys)
    if argv[0] == "evaluate":
        out = ""  # evaluate prints its table before saving it
    _assert_one_clear_line(code, out, err, os.strerror(errno))
    assert _tree(workdir) == before


def test_a_failed_fsync_removes_the_partial_output(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _tree(workdir)

    def fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    code, out, err = _main(["score", "run", "late-nan.csv", "--columns", "y", "--out", "s.csv"],
                           capsys)
    assert code == 2 and "Traceback" not in err
    assert _tree(workdir) == before


# ----- inputs that are fine, though they look odd ------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_table("bom.csv").columns == ["x", "y"]
    realnvp.cli.main(["score", "run", "bom.csv", "--out", "s.csv"])
    assert (workdir / "s.csv").read_text().splitlines()[0] == "x,y,log_prob"


def test_huge_but_finite_values_score_without_nan(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    realnvp.cli.main(["score", "run", "huge.csv", "--out", "s.csv"])
    import pandas as pd

    scores = pd.read_csv("s.csv")["log_prob"].to_numpy()
    assert scores.shape == (40,) and not np.isnan(scores).any()  # -inf: it underflows


# ----- hostile run folders and model files, through every command that opens a model ------

MODEL_READERS = [["sample", "run"], ["score", "run", "ok.csv"], ["evaluate", "run"],
                 ["plot", "run"]]


def _broken_model_files(folder: Path) -> dict[str, Path]:
    from test_io import _broken_files  # the broken files test_io.py feeds to realnvp.load

    return _broken_files(folder)


@pytest.mark.parametrize("reader", MODEL_READERS, ids=lambda r: r[0])
def test_every_command_that_opens_a_model_refuses_broken_and_hostile_files(
    workdir: Path, capsys: pytest.CaptureFixture[str], reader: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    broken = _broken_model_files(tmp_path_factory.mktemp("broken"))
    model = workdir / "run" / "model.safetensors"
    for name, path in broken.items():
        shutil.copy(path, model)
        before = _tree(workdir)
        code, out, err = _main(reader, capsys)
        _assert_one_clear_line(code, out, err, r"run/model\.safetensors: ")
        assert _tree(workdir) == before, name
    assert not (workdir / "pwned").exists()


def test_a_killed_run_with_a_damaged_checkpoint_is_a_clear_error_everywhere(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = workdir / "run"
    (run / "model.safetensors").unlink()
    with open(run / "checkpoint.safetensors", "r+b") as f:
        f.truncate(200)
    for argv in [*MODEL_READERS, ["train", "--resume", "run"]]:
        before = _tree(workdir)
        code, out, err = _main(argv, capsys)
        _assert_one_clear_line(code, out, err, r"run/checkpoint\.safetensors: ")
        assert _tree(workdir) == before


RUN_DAMAGE: dict[str, Callable[[Path], object]] = {
    "config-not-json": lambda run: (run / "config.json").write_text("{not json"),
    "config-empty": lambda run: (run / "config.json").write_text(""),
    "config-missing": lambda run: (run / "config.json").unlink(),
    "config-a-list": lambda run: (run / "config.json").write_text("[]"),
    "config-without-data": lambda run: (run / "config.json").write_text('{"config": {}}'),
}


def _run_readers() -> list[list[str]]:
    return [["evaluate", "run", "--no-baselines"], ["plot", "run"],
            ["train", "--resume", "run", "--no-plots", "--quiet"]]


@pytest.mark.parametrize("damage", list(RUN_DAMAGE))
def test_a_damaged_run_config_is_a_clear_error(
    workdir: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    RUN_DAMAGE[damage](workdir / "run")
    for argv in _run_readers():
        before = _tree(workdir)
        code, out, err = _main(argv, capsys)
        _assert_one_clear_line(code, out, err, r"run(/config\.json)?: ")
        assert _tree(workdir) == before


@pytest.mark.parametrize("content", ["pickle", "truncated"])
def test_damaged_validation_scores_are_a_clear_error_naming_the_file(
    workdir: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = workdir / "run" / "val_log_prob.npy"
    if content == "pickle":
        np.save(path, np.array([_Evil()], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(path.read_bytes()[:60])
    code, out, err = _main(["score", "run", "ok.csv", "--contamination", "0.1"], capsys)
    _assert_one_clear_line(code, out, err, r"val_log_prob\.npy")
    assert not (workdir / "pwned").exists()


@pytest.mark.parametrize("change", [{"hidden": [2**40]}, {"dim": 2**62},
                                    {"coupling": "spline", "bins": 10**12}],
                         ids=["hidden-2**40", "dim-2**62", "bins-10**12"])
def test_a_config_asking_for_absurd_sizes_is_refused(tmp_path: Path, change: dict) -> None:
    import json

    from safetensors.torch import save

    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
    data = realnvp.io.to_bytes(flow)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    config = json.loads(header["__metadata__"]["realnvp"])
    config["kwargs"].update(change)
    state = {k: v.contiguous() for k, v in flow.state_dict().items()}
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(save(state, metadata={"realnvp": json.dumps(config)}))
    with pytest.raises(ModelFileError, match="crafted.safetensors"):
        realnvp.load(path)


def test_a_failed_forced_run_keeps_the_run_it_was_to_replace(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fit_module = sys.modules["realnvp.training.fit"]

    def failing_fit(*args, **kwargs):
        raise fit_module.NonFiniteLossError("step 7: 20 non-finite steps in a row; stopping")

    monkeypatch.setattr("realnvp.commands.fit", failing_fit)
    before = _tree(workdir / "run")
    with pytest.raises((SystemExit, RuntimeError)):
        realnvp.cli.main([*TRAIN, "--out", "run", "--force"])
    assert _tree(workdir / "run") == before


def test_training_that_diverges_is_one_line_and_leaves_no_run(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fit_module = sys.modules["realnvp.training.fit"]

    def failing_fit(*args, **kwargs):
        raise fit_module.NonFiniteLossError("step 7: 20 non-finite steps in a row; stopping")

    monkeypatch.setattr("realnvp.commands.fit", failing_fit)
    before = _tree(workdir)
    code, out, err = _main([*TRAIN, "--out", "new"], capsys)
    _assert_one_clear_line(code, out, err, r"step 7: 20 non-finite steps")
    assert _tree(workdir) == before


# ----- real processes: exit status and stderr as a shell sees them ------------------------


def test_a_real_process_exits_2_with_one_line_and_no_traceback(workdir: Path) -> None:
    """The table above runs ``main`` in-process; this checks what a shell sees, once."""
    before = _tree(workdir)
    proc = subprocess.run(
        [sys.executable, "-m", "realnvp", "score", "pickle.safetensors", "ok.csv", "--out",
         "s.csv"], cwd=workdir, text=True, capture_output=True, timeout=120)
    _assert_one_clear_line(proc.returncode, proc.stdout, proc.stderr, r"looks like a pickle")
    assert _tree(workdir) == before
    assert not (workdir / "pwned").exists()


# ----- the public functions behind the commands -------------------------------------------


def _flow() -> realnvp.Flow:
    return realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))


def lib(id: str, call: Callable[[], object], error: type, match: str) -> object:
    return pytest.param(call, error, match, id=id)


def _moons() -> torch.Tensor:
    return get_toy("moons").sample(100, seed=0)[0]


LIBRARY_CASES = [
    lib("load_table-missing", lambda: load_table("missing.csv"), TableError, r"no such file"),
    lib("load_table-empty", lambda: load_table("empty.csv"), TableError, r"empty file"),
    lib("load_table-header-only", lambda: load_table("header.csv"), TableError, r"header only"),
    lib("load_table-text", lambda: load_table("text.csv"), TableError, r"non-numeric value 'a'"),
    lib("load_table-nan", lambda: load_table("nan.csv"), TableError, r"NaN in column 'x'"),
    lib("load_table-inf", lambda: load_table("inf.csv"), TableError, r"infinite value"),
    lib("load_table-overflow", lambda: load_table("overflow.csv"), TableError, r"infinite value"),
    lib("load_table-ragged", lambda: load_table("ragged.csv"), TableError, r"line 3 has 3 fields"),
    lib("load_table-pipe", lambda: load_table("pipe.csv"), TableError, r"non-numeric value '1\|2'"),
    lib("load_table-mixed", lambda: load_table("mixed.csv"), TableError, r"'four' at line 3"),
    lib("load_table-duplicates", lambda: load_table("dup.csv"), TableError, r"duplicate column"),
    lib("load_table-folder", lambda: load_table("adir.csv"), TableError, r"is a directory"),
    lib("load_table-model-file", lambda: load_table("run/model.safetensors"), TableError,
        r"unsupported file type"),
    lib("iter_table_chunks-wrong-width", lambda: iter_table_chunks("three.csv", n_columns=2),
        TableError, r"expected 2 columns; got 3"),
    lib("save_table-inside-a-file", lambda: save_table("afile/x.csv", np.ones((2, 2)), ["a", "b"]),
        TableError, r"afile: no such folder"),
    lib("save_table-folder", lambda: save_table("adir.csv", np.ones((2, 2)), ["a", "b"]),
        TableError, r"is a directory"),
    lib("save_table-unknown-type", lambda: save_table("x.xlsx", np.ones((2, 2)), ["a", "b"]),
        TableError, r"unsupported file type"),
    lib("save_table-duplicates", lambda: save_table("x.csv", np.ones((2, 2)), ["a", "a"]),
        TableError, r"duplicate column"),
    lib("save_table-nan", lambda: save_table("x.csv", np.array([[np.nan, 1.0]]), ["a", "b"]),
        ValueError, r"NaN|finite"),
    lib("load-missing", lambda: realnvp.load("missing.safetensors"), ModelFileError,
        r"no such model file"),
    lib("load-plain-folder", lambda: realnvp.load("adir.csv"), ModelFileError,
        r"no such model file"),
    lib("load-empty", lambda: realnvp.load("empty.safetensors"), ModelFileError, r"empty file"),
    lib("load-pickle", lambda: realnvp.load("pickle.safetensors"), ModelFileError,
        r"looks like a pickle"),
    lib("load-csv", lambda: realnvp.load("ok.csv"), ModelFileError, r"not a valid safetensors"),
    lib("save-inside-a-file", lambda: realnvp.save(_flow(), "afile/model"), ModelFileError,
        r"afile"),
    lib("fit-nan", lambda: realnvp.fit(_flow(), [[0.0, 1.0], [np.nan, 2.0]] * 10, steps=2),
        ValueError, r"Expected finite values in data; got NaN values \(first at row 1\)"),
    lib("fit-text", lambda: realnvp.fit(_flow(), [["a", "b"]] * 10, steps=2), ValueError,
        r"Expected numeric data"),
    lib("fit-wrong-width", lambda: realnvp.fit(_flow(), np.ones((10, 3)), steps=2), ValueError,
        r"Expected 2 features; got 3"),
    lib("fit-zero-steps", lambda: realnvp.fit(_flow(), _moons(), steps=0), ValueError,
        r"Expected steps >= 1; got 0"),
    lib("fit-negative-steps", lambda: realnvp.fit(_flow(), _moons(), steps=-3), ValueError,
        r"Expected steps >= 1; got -3"),
    lib("fit-zero-batch", lambda: realnvp.fit(_flow(), _moons(), batch_size=0), ValueError,
        r"Expected batch_size >= 1"),
    lib("fit-unknown-device", lambda: realnvp.fit(_flow(), _moons(), device="tpu"), ValueError,
        r"Unknown device 'tpu'"),
    lib("fit-one-row", lambda: realnvp.fit(_flow(), [[1.0, 2.0]], steps=2), ValueError,
        r"at least 2 rows"),
    lib("fit-constant-column", lambda: realnvp.fit(_flow(), [[1.0, 2.0], [1.0, 3.0]] * 5, steps=2),
        ValueError, r"Column 0 is constant"),
    lib("fit-huge", lambda: realnvp.fit(_flow().float(), [[1e300, 0.0], [-1e300, 1.0]] * 10,
                                        steps=5, progress=False),
        ValueError, r"float32|range|large"),
    lib("get_toy-unknown", lambda: get_toy("nosuchtoy"), ValueError, r"Unknown toy 'nosuchtoy'"),
    lib("RealNVP-zero-dim", lambda: realnvp.RealNVP(dim=0), ValueError, r"Expected dim >= 1"),
    lib("sample-zero", lambda: _flow().sample(0), ValueError, r"Expected n_samples >= 1; got 0"),
    lib("sample-negative", lambda: _flow().sample(-2), ValueError, r"Expected n_samples >= 1"),
    lib("log_prob-1d", lambda: _flow().log_prob(torch.zeros(3)), ValueError, r"2-D"),
    lib("log_prob-wrong-width", lambda: _flow().log_prob(torch.zeros(4, 3)), ValueError,
        r"Expected 2 features; got 3"),
    lib("load_data-unknown-toy", lambda: realnvp.runs.load_data("nosuchtoy"), ValueError,
        r"Unknown toy"),
    lib("resolve_device-unknown", lambda: realnvp.training.resolve_device("tpu"), ValueError,
        r"Unknown device"),
]


@pytest.mark.parametrize(("call", "error", "match"), LIBRARY_CASES)
def test_every_public_function_rejects_bad_input_in_one_line_and_writes_nothing(
    workdir: Path, call: Callable[[], object], error: type, match: str
) -> None:
    before = _tree(workdir)
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    assert _tree(workdir) == before
    assert not (workdir / "pwned").exists()


@pytest.mark.parametrize("case", ["not-a-run", "holds-the-data"])
def test_force_never_deletes_a_folder_that_is_not_a_run_or_holds_the_data(
    workdir: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    folder = workdir / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    (folder / "data.csv").write_bytes((workdir / "ok.csv").read_bytes())
    if case == "holds-the-data":
        (folder / "config.json").write_text("{}")  # looks like a run
    before = _tree(folder)
    args = ["train", "--data", str(folder / "data.csv"), *TINY, "--out", str(folder),
            "--force"]
    code, out, err = _main(args, capsys)
    _assert_one_clear_line(code, out, err, "not a realnvp run folder" if case == "not-a-run"
                           else "holds the data file")
    assert _tree(folder) == before


def test_evaluate_on_a_file_matches_columns_by_name_and_tests_on_every_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    x = g.normal(size=(300, 2)) * [1.0, 3.0]
    save_table(tmp_path / "ab.csv", x, ["a", "b"])
    save_table(tmp_path / "ba.csv", x[:, ::-1], ["b", "a"])
    save_table(tmp_path / "pq.csv", x, ["p", "q"])
    np.save(tmp_path / "ab.npy", x)
    realnvp.cli.main(["train", "--data", "ab.csv", *TINY, "--out", "run"])
    capsys.readouterr()
    nll = {}
    for name in ("ab.csv", "ba.csv", "ab.npy"):
        realnvp.cli.main(["evaluate", "run", "--data", name, "--no-baselines"])
        (row,) = json.loads((tmp_path / "run" / "evaluation.json").read_text())
        assert row["n_test"] == 300  # every row of the file is a test row
        nll[name] = row["nll"]
    capsys.readouterr()
    assert nll["ba.csv"] == pytest.approx(nll["ab.csv"]) == pytest.approx(nll["ab.npy"])
    code, out, err = _main(["evaluate", "run", "--data", "pq.csv", "--no-baselines"], capsys)
    _assert_one_clear_line(code, out, err, r"pq.csv: no column 'a'.*trained on a, b")


def test_evaluate_says_when_there_were_no_held_out_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    save_table(tmp_path / "five.csv", np.random.default_rng(0).normal(size=(5, 2)), ["a", "b"])
    realnvp.cli.main(["train", "--data", "five.csv", *TINY, "--out", "run"])
    capsys.readouterr()
    realnvp.cli.main(["evaluate", "run", "--no-baselines"])
    assert "too few for a held-out split" in capsys.readouterr().err


def test_samples_of_rounded_columns_are_put_back_on_their_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    counts = g.poisson(3, 400).astype(float)
    halves = np.round(g.normal(0, 2, 400) * 2) / 2 + 0.25  # the grid ..., -0.25, 0.25, 0.75
    save_table(tmp_path / "grid.csv", np.stack([counts, halves, g.normal(size=400)], 1),
               ["count", "half", "z"])
    realnvp.cli.main(["train", "--data", "grid.csv", *TINY, "--out", "run"])
    for extra, on_grid in (([], True), (["--continuous"], False)):
        realnvp.cli.main(["sample", "run", "-n", "200", "--out", "s.csv", *extra])
        s = load_table(tmp_path / "s.csv").data
        for j, (step, origin) in enumerate(((1.0, 0.0), (0.5, -4.75))):
            cells = (s[:, j] - origin) / step
            assert np.allclose(cells, np.round(cells), atol=1e-4) == on_grid
        inside = (s[:, 0] >= 0) & (s[:, 0] <= counts.max())  # within the counts seen
        assert inside.all() if on_grid else not inside.all()
        assert not np.allclose(s[:, 2], np.round(s[:, 2]))  # a continuous column stays so
    # A copy of the model file alone still knows its columns' names and grids.
    from realnvp.io import MODEL_FILE

    shutil.copy(tmp_path / "run" / MODEL_FILE, tmp_path / "alone.safetensors")
    realnvp.cli.main(["sample", "alone.safetensors", "-n", "50", "--out", "a.csv"])
    alone = load_table(tmp_path / "a.csv")
    assert list(alone.columns) == ["count", "half", "z"]
    assert np.allclose(alone.data[:, 0], np.round(alone.data[:, 0]), atol=1e-4)
    capsys.readouterr()


def test_train_warns_about_a_saved_row_index_and_a_run_that_never_improved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    rows = np.column_stack([np.arange(60.0), g.normal(size=(60, 2))])
    save_table(tmp_path / "indexed.csv", rows, ["column0", "a", "b"])
    realnvp.cli.main(["train", "--data", "indexed.csv", *TINY, "--out", "run"])
    err = capsys.readouterr().err
    assert "column 'column0' holds the row numbers" in err
    assert "'a' holds" not in err
    assert "Adam weight decay 0.0556, against overfitting few rows" in err  # 3 / 54 rows
    save_table(tmp_path / "few.csv", g.normal(size=(40, 2)), ["a", "b"])
    (tmp_path / "no_decay.toml").write_text("weight_decay = 0.0\n")  # "auto" would regularise
    realnvp.cli.main(["train", "--data", "few.csv", "--steps", "200", "--lr", "0.05",
                      "--config", "no_decay.toml", "--no-plots", "--quiet", "--out", "run2"])
    err = capsys.readouterr().err
    assert "no step improved on the starting Gaussian" in err and "weight decay" not in err
