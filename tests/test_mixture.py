"""FlowMixture: the density of an ensemble; saving, loading, training and the CLI with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import realnvp
import realnvp.cli
from checkpoint_watch import checkpoint_meta, sigint_at_step
from realnvp.mixture import FlowMixture, as_single_flow


def _member(seed: int, shift: float = 0.0, dim: int = 2) -> realnvp.Flow:
    """A small flow away from the identity (its weights perturbed), its data centre at
    ``shift`` (the standardisation's location)."""
    flow = realnvp.RealNVP(dim=dim, n_layers=3, hidden=(8,), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        flow.standardize.fit(torch.randn(50, dim, generator=g, dtype=torch.float64) + shift)
    return flow.eval()


def test_log_prob_is_the_log_of_the_members_mean_density(generator: torch.Generator) -> None:
    members = [_member(k) for k in range(3)]
    mix = FlowMixture(members)
    x = torch.randn(64, 2, generator=generator)
    expected = torch.log(torch.stack([m.log_prob(x).exp() for m in members]).mean(0))
    assert torch.allclose(mix.log_prob(x), expected, atol=1e-12, rtol=0)
    assert torch.equal(FlowMixture([members[0]]).log_prob(x), members[0].log_prob(x))


def test_mixture_density_integrates_to_one() -> None:
    mix = FlowMixture([_member(0, -2.0), _member(1, 2.0)])
    edges = torch.linspace(-12.0, 12.0, 601)
    h = float(edges[1] - edges[0])
    grid = torch.cartesian_prod(edges, edges)
    with torch.no_grad():
        total = float(mix.log_prob(grid).exp().sum()) * h * h
    assert total == pytest.approx(1.0, abs=2e-3)


def test_samples_come_from_each_member_in_equal_shares() -> None:
    shifts = [-40.0, 0.0, 40.0]
    mix = FlowMixture([_member(k, s) for k, s in enumerate(shifts)])
    n = 6000
    x = mix.sample(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 2) and bool(torch.isfinite(x).all())
    nearest = torch.cdist(x[:, :1], torch.tensor(shifts)[:, None]).argmin(1)
    counts = torch.bincount(nearest, minlength=3).double()
    sd = math.sqrt(n * (1 / 3) * (2 / 3))
    assert bool(((counts - n / 3).abs() < 4 * sd).all()), counts
    # reproducible from the generator; the log-density given with samples is the mixture's
    again = mix.sample(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    xs, log_q = mix.sample_and_log_prob(100, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(log_q, mix.log_prob(xs), atol=1e-12, rtol=0)


def test_mixture_refuses_bad_members() -> None:
    with pytest.raises(ValueError, match="at least one flow"):
        FlowMixture([])
    with pytest.raises(TypeError, match="realnvp.Flow members"):
        FlowMixture([_member(0), torch.nn.Linear(2, 2)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="member 1 has dim=3"):
        FlowMixture([_member(0), _member(1, dim=3)])
    with pytest.raises(ValueError, match="one dtype; member 1 is torch.float32"):
        FlowMixture([_member(0), _member(1).float()])
    with pytest.raises(ValueError, match="Expected 2 columns; got 3|2 features"):
        FlowMixture([_member(0), _member(1)]).log_prob(torch.zeros(4, 3))


def test_as_single_flow() -> None:
    a, b = _member(0), _member(1)
    assert as_single_flow(a) is a
    assert as_single_flow(FlowMixture([a, b])) is a


def test_save_and_load_round_trip(tmp_path: Path, generator: torch.Generator) -> None:
    mix = FlowMixture([_member(0), _member(1, 1.0), _member(2, -1.0)])
    path = realnvp.save(mix, tmp_path / "mix")
    loaded = realnvp.load(path)
    assert isinstance(loaded, FlowMixture) and len(loaded) == 3
    x = torch.randn(32, 2, generator=generator)
    assert torch.equal(loaded.log_prob(x), mix.log_prob(x))
    # a stray tensor, or a member's weights missing, is a clear error, not a half-built model
    state = load_file(path)
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8],
                                                                  "little")])
    metadata = header["__metadata__"]
    save_file({**state, "bijection.0.loc": torch.zeros(2)}, tmp_path / "stray.safetensors",
              metadata=metadata)
    with pytest.raises(realnvp.ModelFileError, match="unexpected bijection.0.loc"):
        realnvp.load(tmp_path / "stray.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("members.2.")},
              tmp_path / "short.safetensors", metadata=metadata)
    with pytest.raises(realnvp.ModelFileError, match="more than the file.s weights hold"):
        realnvp.load(tmp_path / "short.safetensors")
    config = json.loads(metadata["realnvp"])
    config["mixture"] = []
    save_file(state, tmp_path / "empty.safetensors",
              metadata={**metadata, "realnvp": json.dumps(config)})
    with pytest.raises(realnvp.ModelFileError, match="corrupt mixture config"):
        realnvp.load(tmp_path / "empty.safetensors")


def test_mixture_pictures(tmp_path: Path) -> None:
    from realnvp.plotting import plot_density, save_all_plots

    mix = FlowMixture([_member(0), _member(1, 1.0)])
    data = np.random.default_rng(0).normal(size=(200, 2))
    images = save_all_plots(tmp_path, mix, data)
    assert {"data_vs_samples", "density", "latent", "layers"} <= set(images)
    assert all(p.is_file() for p in images.values())
    assert plot_density(mix, resolution=10).get_title() == "Model log-density: mixture of 2 flows"


def _train(tmp_path: Path, *extra: str) -> Path:
    realnvp.cli.main(["train", "--data", "moons", "--n-train", "400", "--steps", "40",
                      "--layers", "2", "--hidden", "8", "--batch-size", "64", "--seed", "5",
                      "--no-plots", "--quiet", "--out", str(tmp_path / "run"), *extra])
    return tmp_path / "run"


def test_train_an_ensemble_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    torch.set_default_dtype(torch.float32)  # as in a fresh process
    run = _train(tmp_path, "--ensemble", "3")
    err = capsys.readouterr().err
    assert "the mixture of 3 flows" in err
    model = realnvp.load(run)
    assert isinstance(model, FlowMixture) and len(model) == 3
    seeds = [m.spec["kwargs"]["seed"] for m in model.members]
    assert seeds == [5, 6, 7]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["members"]] == [5, 6, 7]
    history = (run / "metrics.csv").read_text().splitlines()
    assert history[0] == "member,step,train_nll,val_nll,lr,seconds"
    assert {line.split(",")[0] for line in history[1:]} == {"0", "1", "2"}
    # the reported validation NLL is the mixture's, on the rows every member held out
    val_scores = np.load(run / "val_log_prob.npy")
    assert metrics["val_nll"] == pytest.approx(-val_scores.mean(), rel=1e-6)
    # -log of a mean is at most the mean of -logs (Jensen), row by row on the same rows
    assert metrics["val_nll"] <= np.mean([m["val_nll"] for m in metrics["members"]]) + 1e-5
    x = torch.randn(20, 2)
    assert not torch.allclose(model.members[0].log_prob(x), model.members[1].log_prob(x))


def test_resume_an_ensemble(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    run = _train(tmp_path, "--ensemble", "2")
    realnvp.cli.main(["train", "--resume", str(run), "--steps", "60", "--no-plots", "--quiet"])
    history = (run / "metrics.csv").read_text().splitlines()[1:]
    last = {}
    for line in history:
        member, step = line.split(",")[:2]
        last[member] = max(last.get(member, 0), int(step))
    assert last == {"0": 60, "1": 60}
    (run / "model.safetensors").unlink()  # as if the run had been stopped before the end
    with pytest.raises(realnvp.ModelFileError, match="unfinished ensemble run.*--resume"):
        realnvp.load(run)


def test_bad_ensemble_size_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    with pytest.raises(SystemExit) as info:
        _train(tmp_path, "--ensemble", "0")
    assert info.value.code == 2
    assert "Expected ensemble >= 1; got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_fit_ensemble_trains_every_member_on_the_same_split(generator: torch.Generator) -> None:
    from realnvp.training import fit_ensemble, mean_nll
    from realnvp.training.fit import split

    x = torch.randn(300, 2, generator=generator) * torch.tensor([2.0, 0.5])
    mix = FlowMixture([realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,), seed=k)
                       for k in range(2)])
    histories = fit_ensemble(mix, x, steps=30, eval_every=10, seed=4, progress=False)
    assert len(histories) == 2
    _, val = split(x, 0.1, torch.Generator().manual_seed(4))
    for member, history in zip(mix.members, histories, strict=True):
        # each member's kept weights score the one shared validation split as recorded
        assert mean_nll(member, val) == pytest.approx(history.best_val_nll, rel=1e-10)
    with pytest.raises(TypeError, match="FlowMixture"):
        fit_ensemble(mix.members[0], x, steps=1)  # type: ignore[arg-type]


def test_training_curve_of_an_ensemble_shows_its_first_member() -> None:
    import pandas as pd

    from realnvp.plotting import plot_training_curve

    rows = [{"member": k, "step": s, "train_nll": 1.0 + k + 1 / s, "val_nll": 1.1 + k,
             "lr": 1e-3} for k in range(2) for s in (100, 200, 300)]
    ax = plot_training_curve(pd.DataFrame(rows))
    train_line = next(line for line in ax.get_lines() if line.get_label() == "train NLL")
    assert list(train_line.get_xdata()) == [100, 200, 300]
    assert max(train_line.get_ydata()) < 2.0  # member 1's curve (above 2) is not drawn


def _step(folder: Path) -> int:
    return int(checkpoint_meta(folder)["step"])


def _small_mixture(n: int = 2) -> FlowMixture:
    return FlowMixture([realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,), seed=k)
                        for k in range(n)]).float()


def test_members_trained_at_once_match_members_trained_in_turn(
        generator: torch.Generator) -> None:
    from realnvp.training import fit_ensemble

    x = torch.randn(400, 2, generator=generator, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in turn, on one thread each, as the workers train
    try:
        in_turn = _small_mixture(3)
        fit_ensemble(in_turn, x, steps=40, batch_size=64, progress=False, workers=1)
    finally:
        torch.set_num_threads(threads)
    at_once = _small_mixture(3)
    fit_ensemble(at_once, x, steps=40, batch_size=64, progress=False, workers=2)
    assert torch.get_num_threads() == threads  # restored
    for a, b in zip(in_turn.state_dict().values(), at_once.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="workers >= 1"):
        fit_ensemble(at_once, x, steps=1, workers=0)


def test_a_failing_member_stops_the_others(tmp_path: Path, generator: torch.Generator) -> None:
    from realnvp.training import fit_ensemble

    def fail(step: int, flow: realnvp.Flow) -> None:
        if step == 50:
            raise ValueError("member 0 failed")

    x = torch.randn(400, 2, generator=generator, dtype=torch.float32)
    with pytest.raises(ValueError, match="member 0 failed"):
        fit_ensemble(_small_mixture(), x, steps=10**6, batch_size=32, progress=False,
                     workers=2, callbacks=[fail], checkpoint_dir=tmp_path,
                     checkpoint_every=10**6)
    # member 1 stopped after its current step, saving where it was, long before the end
    assert 0 < _step(tmp_path / "members" / "1") < 10**6


def test_stop_event_ends_fit_like_ctrl_c(tmp_path: Path, generator: torch.Generator) -> None:
    import threading

    stop = threading.Event()
    stop.set()
    flow = realnvp.RealNVP(dim=2, n_layers=2, hidden=(8,))
    with pytest.raises(KeyboardInterrupt):
        realnvp.fit(flow, torch.randn(100, 2, generator=generator), steps=100, progress=False,
                    checkpoint_dir=tmp_path, stop_event=stop)
    assert _step(tmp_path) == 1


def test_a_member_that_fails_later_in_order_stops_the_first(
        tmp_path: Path, generator: torch.Generator) -> None:
    from realnvp.training import NonFiniteLossError, fit_ensemble

    mixture = _small_mixture()
    with torch.no_grad():
        next(mixture.members[1].parameters()).fill_(math.nan)  # member 1 fails at once
    x = torch.randn(400, 2, generator=generator, dtype=torch.float32)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        fit_ensemble(mixture, x, steps=10**6, batch_size=32, progress=False, workers=2,
                     checkpoint_dir=tmp_path, checkpoint_every=10**6)
    assert 0 < _step(tmp_path / "members" / "0") < 10**6


def test_ctrl_c_stops_every_member_and_resume_finishes_the_ensemble(
        tmp_path: Path, generator: torch.Generator) -> None:
    """A real SIGINT while two members train at once: both stop after their step with a
    checkpoint, ``KeyboardInterrupt`` reaches the caller, and resuming gives the weights
    of an uninterrupted run."""
    import signal

    from realnvp.training import fit_ensemble

    x = torch.randn(400, 2, generator=generator, dtype=torch.float32)
    kw = {"steps": 3000, "batch_size": 32, "progress": False, "workers": 2,
          "checkpoint_every": 20}
    watcher = sigint_at_step(tmp_path / "run" / "members" / "0", 100)
    mixture = _small_mixture()
    with pytest.raises(KeyboardInterrupt):
        fit_ensemble(mixture, x, checkpoint_dir=tmp_path / "run", **kw)
    watcher.join(timeout=60)
    steps = [_step(tmp_path / "run" / "members" / str(k)) for k in range(2)]
    assert steps[0] >= 100 and all(0 < s < 3000 for s in steps), steps
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    resumed = _small_mixture()
    fit_ensemble(resumed, x, checkpoint_dir=tmp_path / "run", resume=True, **kw)
    reference = _small_mixture()
    fit_ensemble(reference, x, checkpoint_dir=tmp_path / "reference", **kw)
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
