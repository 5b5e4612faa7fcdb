"""Training configs: every field reaches the flow, and bad values are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import realnvp
import realnvp.cli
from realnvp.bijections.spline import RationalQuadraticCoupling
from realnvp.runs import build_flow
from realnvp.training import PRESETS, TrainConfig


def _splines(flow: realnvp.Flow) -> list[RationalQuadraticCoupling]:
    return [m for m in flow.bijection if isinstance(m, RationalQuadraticCoupling)]


def test_spline_bins_and_bound_reach_the_flow() -> None:
    config = TrainConfig.from_dict({"coupling": "spline", "bins": 12, "spline_bound": 4.0,
                                    "layers": 3, "hidden": [8]}).validate()
    layers = _splines(build_flow(config, 2))
    assert len(layers) == 3
    assert all(layer.bins == 12 and layer.bound == 4.0 for layer in layers)


@pytest.mark.parametrize("change, message", [
    ({"bins": 1}, "Expected bins >= 2; got 1"),
    ({"spline_bound": 0.0}, "Expected spline_bound > 0; got 0.0"),
    ({"layers": 0}, "Expected layers >= 1; got 0"),
    ({"weight_decay": -0.1}, "Expected weight_decay >= 0 or auto; got -0.1"),
    ({"weight_decay": "heavy"}, "option weight_decay expects a number or auto; got 'heavy'"),
])
def test_bad_values_are_refused_by_name(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(change).validate()


def test_weight_decay_is_auto_or_a_number() -> None:
    assert TrainConfig().weight_decay == "auto"
    assert TrainConfig.from_dict({"weight_decay": "AUTO"}).validate().weight_decay == "auto"
    assert TrainConfig.from_dict({"weight_decay": "1e-3"}).validate().weight_decay == 1e-3
    assert TrainConfig.from_dict({"weight_decay": 0}).validate().weight_decay == 0.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name: str) -> None:
    config = TrainConfig.from_dict(PRESETS[name], source=f"preset {name}").validate()
    assert build_flow(config, 2).dim == 2


def test_a_toml_config_sets_the_spline_bins_of_a_cli_run(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text('coupling = "spline"\nbins = 4\nlayers = 2\n')
    run = tmp_path / "run"
    realnvp.cli.main(["train", "--config", str(tmp_path / "cfg.toml"), "--steps", "3",
                      "--hidden", "8", "--n-train", "200", "--no-plots", "--quiet",
                      "--device", "cpu", "--out", str(run)])
    assert json.loads((run / "config.json").read_text())["config"]["bins"] == 4
    assert [layer.bins for layer in _splines(realnvp.load(run))] == [4, 4]
