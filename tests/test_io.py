"""Saving and loading: exact reproduction, and one clear error for every broken file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import realnvp
from realnvp.io import ModelFileError

from registry import randomize


@pytest.mark.parametrize(
    "kwargs",
    [{"dim": 2}, {"dim": 5, "actnorm": True, "permutation": "lu", "learn_base": True},
     {"dim": 3, "batchnorm": True, "coupling": "additive"}, {"dim": 1}],
    ids=["moons", "5d-actnorm-lu", "3d-batchnorm-additive", "1d"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_save_load_reproduces_log_prob_exactly(tmp_path: Path, kwargs: dict, dtype) -> None:
    flow = randomize(realnvp.RealNVP(**kwargs).to(dtype), std=0.2)
    x = torch.randn(64, kwargs["dim"], dtype=dtype)
    path = realnvp.save(flow, tmp_path / "model")
    assert path.name == "model.safetensors"
    loaded = realnvp.load(tmp_path / "model")
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_save_load_in_a_fresh_process(tmp_path: Path) -> None:
    flow = randomize(realnvp.RealNVP(dim=2).float(), std=0.3)
    realnvp.save(flow, tmp_path / "model.safetensors")
    x = torch.randn(32, 2, dtype=torch.float32)
    torch.save(x, tmp_path / "x.pt")  # test data only; realnvp never reads pickles
    code = (
        "import torch, realnvp, sys; d = sys.argv[1];"
        "x = torch.load(d + '/x.pt');"
        "torch.save(realnvp.load(d + '/model').log_prob(x).detach(), d + '/lp.pt')"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert torch.equal(torch.load(tmp_path / "lp.pt"), flow.log_prob(x).detach())


def test_save_into_a_folder_and_load_the_folder(tmp_path: Path) -> None:
    flow = realnvp.RealNVP(dim=2)
    realnvp.save(flow, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert realnvp.load(tmp_path).dim == 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _broken_files(tmp_path: Path) -> dict[str, Path]:
    good = realnvp.save(realnvp.RealNVP(dim=2), tmp_path / "good")
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "garbage": os.urandom(300),
        "text": b"hello, I am a CSV\n1,2\n",
        "pickle": pickle.dumps(_Evil()),
        "huge-header-length": (10**15).to_bytes(8, "little") + b"{}",
    }
    paths = {name: tmp_path / f"{name}.safetensors" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    torch.save({"w": torch.ones(2)}, tmp_path / "torchsave.safetensors")
    paths["torch-save"] = tmp_path / "torchsave.safetensors"
    save_file({"w": torch.ones(2)}, tmp_path / "foreign.safetensors")
    paths["foreign-safetensors"] = tmp_path / "foreign.safetensors"
    # Weights of a 2-D flow under the config of a 3-D flow.
    state = {k: v.contiguous() for k, v in realnvp.RealNVP(dim=2).state_dict().items()}
    config = realnvp.io.to_bytes(realnvp.RealNVP(dim=3))
    import json

    header = json.loads(config[8 : 8 + int.from_bytes(config[:8], "little")])
    save_file(state, tmp_path / "mismatch.safetensors", metadata=header["__metadata__"])
    paths["mismatched-config"] = tmp_path / "mismatch.safetensors"
    meta = dict(header["__metadata__"])
    meta["realnvp"] = meta["realnvp"].replace('"realnvp"', '"os.system"', 1)
    save_file(state, tmp_path / "arch.safetensors", metadata=meta)
    paths["unknown-architecture"] = tmp_path / "arch.safetensors"
    meta = dict(header["__metadata__"])
    meta["realnvp"] = "{not json"
    save_file(state, tmp_path / "badjson.safetensors", metadata=meta)
    paths["corrupt-config"] = tmp_path / "badjson.safetensors"
    return paths


CASES = ["empty", "truncated", "garbage", "text", "pickle", "huge-header-length", "torch-save",
         "foreign-safetensors", "mismatched-config", "unknown-architecture", "corrupt-config"]


@pytest.mark.parametrize("case", CASES)
def test_broken_files_raise_one_clear_error_naming_the_file(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _broken_files(tmp_path)[case]
    with pytest.raises(ModelFileError) as info:
        realnvp.load(path)
    assert path.name in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        realnvp.load(tmp_path / "nope")
    with pytest.raises(ModelFileError, match="no such model file"):
        realnvp.load(tmp_path)


def test_hand_assembled_flow_cannot_be_saved(tmp_path: Path) -> None:
    from realnvp.bijections import Chain, Reverse
    from realnvp.distributions import StandardNormal

    flow = realnvp.Flow(Chain([Reverse(2)]), StandardNormal(2))
    with pytest.raises(ValueError, match="registered architecture"):
        realnvp.save(flow, tmp_path / "m")
