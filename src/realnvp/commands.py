"""What each ``realnvp`` command does; ``cli.py`` only parses arguments."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import tomllib
import torch

from realnvp import runs
from realnvp.io import MODEL_FILE, atomic_open, save
from realnvp.mixture import FlowMixture, as_single_flow
from realnvp.training import PRESETS, TrainConfig, fit, fit_ensemble, resolve_device
from realnvp.training.checkpoint import CHECKPOINT_FILE
from realnvp.training.ensemble import MEMBERS_FOLDER

__all__ = ["evaluate", "plot", "resolve_config", "sample", "score", "train"]

_FLAG_TO_FIELD = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "layers": "layers",
                  "hidden": "hidden", "coupling": "coupling", "seed": "seed", "device": "device",
                  "n_train": "n_train", "ensemble": "ensemble"}


def resolve_config(opts: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """defaults <- preset <- TOML file <- flags. Returns the config and the run options."""
    values: dict[str, Any] = {}
    run_opts = {"data": opts.get("data") or "moons", "columns": opts.get("columns"),
                "out": opts.get("out"), "preset": opts.get("preset")}
    file_values: dict[str, Any] = {}
    if opts.get("config_file") is not None:
        path = Path(opts["config_file"])
        if not path.is_file():
            raise ValueError(f"{path}: no such config file")
        with path.open("rb") as f:
            try:
                file_values = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: invalid TOML ({e})") from None
        file_values = {k.replace("-", "_"): v for k, v in file_values.items()}
        for key in ("data", "columns", "out", "preset"):
            if key in file_values:
                run_opts[key] = file_values.pop(key)
        if opts.get("data") not in (None, "moons"):
            run_opts["data"] = opts["data"]
        for key in ("columns", "out", "preset"):
            if opts.get(key) is not None:
                run_opts[key] = opts[key]
    preset = run_opts.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of: {', '.join(PRESETS)}")
    values.update(PRESETS.get(preset or "default", {}))
    values.update(file_values)
    for flag, field in _FLAG_TO_FIELD.items():
        if opts.get(flag) is not None:
            values[field] = opts[flag]
    config = TrainConfig.from_dict(values, source=str(opts.get("config_file") or "options"))
    return config.validate(), run_opts


def train(**opts: Any) -> Path:
    """``realnvp train``: validate everything, then train into a run folder."""
    if opts.get("resume") is not None:
        return _resume(Path(opts["resume"]), opts)
    config, run_opts = resolve_config(opts)
    device = resolve_device(config.device)
    if opts.get("checkpoint_every", 500) < 1:
        raise ValueError(f"Expected --checkpoint-every >= 1; got {opts['checkpoint_every']}")
    data = runs.load_data(str(run_opts["data"]), run_opts["columns"], config.n_train, config.seed)
    name = Path(str(run_opts["data"])).stem if data.toy is None else data.source["name"]
    out = Path(run_opts["out"]) if run_opts["out"] is not None else Path("runs") / name
    data_file = Path(str(run_opts["data"])) if data.toy is None else None
    runs.prepare_run_dir(out, bool(opts.get("force")), data_file)
    from realnvp.training.fit import check_not_constant, check_representable

    check_not_constant(torch.as_tensor(data.x), data.columns)
    flow = runs.build_flow(config, data.x.shape[1])
    check_representable(torch.as_tensor(data.x), flow._anchor().dtype, data.columns)
    for j in _row_number_columns(data.x):
        click.echo(f"warning: column {data.columns[j]!r} holds the row numbers (an index "
                   "saved with the table?); it is modelled like the others: drop it or pick "
                   "--columns", err=True)
    old = None  # with --force, the run being replaced waits here until the new one is made
    if opts.get("force") and out.exists():
        old = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    runs.create_run_dir(out, False)
    try:
        record = {"config": config.to_dict(), "data": data.source, "columns": data.columns,
                  "preset": run_opts.get("preset"), "device": str(device)}
        runs.write_json(out / runs.CONFIG_FILE, record)
        _train_and_finish(out, flow, data, config, device, opts, resume=False)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted; checkpoint kept. Resume with: realnvp train --resume {out}",
                   err=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _resume(run: Path, opts: dict[str, Any]) -> Path:
    record = runs.read_config(run)
    config = TrainConfig.from_dict(record["config"], source=str(run / runs.CONFIG_FILE))
    if opts.get("steps") is not None:
        config = dataclasses.replace(config, steps=int(opts["steps"]))
    config.validate()
    device = resolve_device(opts.get("device") or config.device)
    source = record["data"]
    data = runs.reload_data(source, config)
    if not any((folder / CHECKPOINT_FILE).is_file()
               for folder in (run, run / MEMBERS_FOLDER / "0")):
        raise ValueError(f"{run}: no checkpoint to resume from")
    flow = runs.build_flow(config, data.x.shape[1])
    try:
        _train_and_finish(run, flow, data, config, device, opts, resume=True)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted; checkpoint kept. Resume with: realnvp train --resume {run}",
                   err=True)
        raise
    return run


def _train_and_finish(out: Path, flow: Any, data: runs.Data, config: TrainConfig,
                      device: torch.device, opts: dict[str, Any], resume: bool) -> None:
    plots = not opts.get("no_plots") and data.x.shape[1] == 2
    callbacks = []
    snapshots = None
    first = as_single_flow(flow)
    if plots:
        from realnvp.plotting import TrainingSnapshots

        snapshots = TrainingSnapshots(data.x[:5000], every=max(1, config.steps // 60),
                                      resolution=80, n_samples=1000, seed=config.seed)
        callbacks.append(snapshots)
    _note_slow_training(first, device)
    started = time.perf_counter()
    settings = dict(
        steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup=config.warmup, min_lr_ratio=config.min_lr_ratio,
        clip_grad=config.clip_grad, eval_every=config.eval_every, patience=config.patience,
        device=device, progress=None if not opts.get("quiet") else False,
        checkpoint_every=opts.get("checkpoint_every", 500), columns=data.columns,
    )
    train = fit_ensemble if isinstance(flow, FlowMixture) else fit
    histories = train(flow, data.x, val_fraction=config.val_fraction, seed=config.seed,
                      callbacks=callbacks, checkpoint_dir=out, resume=resume, **settings)
    histories = histories if isinstance(histories, list) else [histories]
    history = histories[0]
    train_seconds = time.perf_counter() - started
    if snapshots is not None and history.records:
        snapshots.record(int(history.records[-1]["step"]), first)
    flow = flow.cpu().eval()
    metrics = _final_metrics(flow, data, histories, train_seconds, config)
    # The column names and grids travel in the model file too, for a copy used on its own.
    save(flow, out / MODEL_FILE, extra={
        "columns": list(data.columns),
        **{key: metrics[key] for key in ("dequantized", "dequantized_origin", "dequantized_max")}})
    runs.write_history(out / runs.METRICS_FILE, histories)
    _save_validation_scores(out, flow, data, config)
    runs.write_json(out / "metrics.json", metrics)
    if not opts.get("no_plots"):
        _draw(out, flow, data, history.to_frame(), snapshots, metrics)
    _print_summary(out, metrics)


def _note_slow_training(flow: Any, device: torch.device) -> None:
    """Say so on stderr when a flow that could take the compiled training step cannot (no C
    compiler, or ``REALNVP_NATIVE=0``): its TorchScript step is 1.5-3.6x slower, autograd
    (what spline couplings fall back to) 6-10x."""
    from realnvp.bijections import RationalQuadraticCoupling
    from realnvp.training import native
    from realnvp.training.fast import compiled_step_applies

    if device.type != "cpu" or next(flow.parameters()).dtype != torch.float32:
        return
    if compiled_step_applies(flow) and native.library() is None:
        why = ("REALNVP_NATIVE=0" if not native.USE_NATIVE
               else "no C compiler (cc/gcc/clang) was found, or it failed")
        spline = any(isinstance(layer, RationalQuadraticCoupling) for layer in flow.bijection)
        slower = ("autograd, 6-10x" if spline else "the TorchScript step, 1.5-3.6x")
        click.echo(f"note: {why}: training runs {slower} slower than the compiled step",
                   err=True)


def _final_metrics(flow: Any, data: runs.Data, histories: list[Any], seconds: float,
                   config: TrainConfig) -> dict[str, Any]:
    history = histories[0]
    metrics: dict[str, Any] = {
        "train_seconds": round(seconds, 2), "steps_run": history.records[-1]["step"]
        if history.records else 0, "best_step": min(h.best_step for h in histories),
        "val_nll": history.best_val_nll, "stopped": history.stopped,
        "skipped_steps": sum(len(h.skipped_steps) for h in histories),
        "weight_decay": history.weight_decay,
        "dequantized": {data.columns[j]: h for j, h in history.dequantized.items()},
        # a point of each rounded column's grid, so samples can be put back on it
        "dequantized_origin": {data.columns[j]: float(np.min(data.x[:, j]))
                               for j in history.dequantized},
        "dequantized_max": {data.columns[j]: float(np.max(data.x[:, j]))
                            for j in history.dequantized},
    }
    if isinstance(flow, FlowMixture):  # scored as its members were validated
        from realnvp.training.fit import mean_nll, split, validation_rows

        _, val = split(torch.as_tensor(data.x), config.val_fraction,
                       torch.Generator().manual_seed(int(config.seed)))
        if val is not None:
            noise = torch.tensor([history.dequantized.get(j, 0.0) for j in range(flow.dim)])
            rows = validation_rows(runs.as_tensor(val.numpy(), flow),
                                   noise if history.dequantized else None, config.seed)
            metrics["val_nll"] = mean_nll(flow, rows)
        metrics["members"] = [
            {"seed": config.seed + k, "val_nll": h.best_val_nll, "best_step": h.best_step,
             "stopped": h.stopped} for k, h in enumerate(histories)]
    test = runs.toy_test_data(data)
    if test is not None:
        from realnvp import metrics as m

        x, log_p = test
        with torch.inference_mode():
            log_q = flow.log_prob(runs.as_tensor(x, flow)).double().numpy()
        nll, gap = m.nll(log_q), m.kl_gap(log_p, log_q)
        metrics.update({"test_nll": nll.value, "test_nll_stderr": nll.stderr,
                        "true_entropy": float(-np.mean(log_p)), "kl_gap": gap.value,
                        "kl_gap_stderr": gap.stderr})
    return metrics


def _save_validation_scores(out: Path, flow: Any, data: runs.Data, config: TrainConfig) -> None:
    """Log-densities of the held-out rows: the reference for --contamination thresholds."""
    from realnvp.training.fit import split

    generator = torch.Generator().manual_seed(int(config.seed))
    _, val = split(torch.as_tensor(data.x), config.val_fraction, generator)
    rows = val if val is not None else torch.as_tensor(data.x)
    with torch.inference_mode():
        scores = flow.log_prob(runs.as_tensor(rows.numpy(), flow)).double().numpy()
    with atomic_open(out / "val_log_prob.npy", "wb") as f:
        np.save(f, scores, allow_pickle=False)


def _draw(out: Path, flow: Any, data: runs.Data, history: Any, snapshots: Any,
          metrics: dict[str, Any]) -> None:
    from realnvp.plotting import save_all_plots
    from realnvp.report import write_report

    toy = data.toy
    images = save_all_plots(out, flow, data.x[:5000],
                            None if data.labels is None else data.labels[:5000],
                            history=history, snapshots=snapshots,
                            true_log_prob=toy.log_prob if toy is not None else None)
    if (out / "training.gif").is_file():
        images.setdefault("training", out / "training.gif")
    config = runs.read_config(out)
    write_report(out, images, metrics, config, title=f"realnvp run: {out.name}")


def _print_summary(out: Path, metrics: dict[str, Any]) -> None:
    lines = [f"trained in {metrics['train_seconds']:.1f} s ({metrics['stopped']})"]
    if metrics.get("members"):
        each = ", ".join(f"{m['val_nll']:.4f}" for m in metrics["members"])
        lines.append(f"validation NLL {metrics['val_nll']:.4f} nats: the mixture of "
                     f"{len(metrics['members'])} flows (each: {each})")
    else:
        lines.append(f"validation NLL {metrics['val_nll']:.4f} nats (best at step "
                     f"{metrics['best_step']})")
    if "kl_gap" in metrics:
        lines.append(f"test NLL {metrics['test_nll']:.4f} ± {metrics['test_nll_stderr']:.4f}; "
                     f"true entropy {metrics['true_entropy']:.4f}; KL gap "
                     f"{metrics['kl_gap']:.4f} ± {metrics['kl_gap_stderr']:.4f} nats")
    if metrics.get("dequantized"):
        cols = ", ".join(f"{c} (step {h:g})" for c, h in metrics["dequantized"].items())
        lines.append(f"rounded columns, trained with uniform dequantization noise: {cols}")
    if metrics.get("weight_decay"):
        lines.append(f"Adam weight decay {metrics['weight_decay']:.3g}, against overfitting few "
                     "rows (weight_decay in a --config file sets it)")
    if metrics.get("best_step") == 0 and metrics.get("steps_run"):
        lines.append("warning: no step improved on the starting Gaussian, which is kept; with "
                     "few rows that is the best estimate, otherwise try a lower --lr")
    for line in lines:
        click.echo(line, err=True)
    click.echo(str(out))


def sample(run: Path, n: int, out: Path | None, seed: int, continuous: bool = False) -> None:
    """``realnvp sample``: draws from the flow; columns that were rounded in the training
    data (trained with dequantization noise) are rounded back onto their grid unless
    ``continuous``: with noise uniform on a grid cell, rounding a draw of the fitted
    density gives a draw of the rounded data's distribution. Those draws are also kept
    within the lowest and highest values of the training data (a count never comes out
    as -1: the flow's support is unbounded, the data's is not)."""
    from realnvp.io import load_with_extra

    if n < 1:
        raise ValueError(f"Expected -n >= 1; got {n}")
    flow, extra = load_with_extra(run)
    columns = _run_columns(run, flow.dim, extra)
    _check_output(out)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.inference_mode():
        x = flow.sample(int(n), generator=generator).numpy()
    if not continuous:
        for j, (step, low, high) in _grids(run, columns, extra).items():
            x[:, j] = np.clip(low + step * np.round((x[:, j] - low) / step), low, high)
    if out is None:
        _write_block(sys.stdout, columns, x, {}, header=True)
        return
    from realnvp.datasets.files import save_table

    save_table(out, x, columns)
    click.echo(str(out), err=True)


def _grids(run: Path, columns: list[str], extra: dict[str, Any]
           ) -> dict[int, tuple[float, float, float]]:
    """Column index -> (grid step, lowest and highest value in the training data) of the
    run's dequantized columns, from its ``metrics.json`` or else from the model file's
    ``extra`` metadata (runs made before the highest value was kept: no upper limit)."""
    path = run / "metrics.json" if run.is_dir() else None
    metrics = json.loads(path.read_text()) if path is not None and path.is_file() else extra
    steps, lows = metrics.get("dequantized") or {}, metrics.get("dequantized_origin") or {}
    highs = metrics.get("dequantized_max") or {}
    if not all(isinstance(d, dict) for d in (steps, lows, highs)):
        return {}
    return {columns.index(c): (float(steps[c]), float(lows[c]), float(highs.get(c, np.inf)))
            for c in steps if c in lows and c in columns and float(steps[c]) > 0}


def _dequantized(x: np.ndarray, grids: dict[int, tuple[float, float, float]], seed: int
                 ) -> np.ndarray:
    """A copy of ``x`` with uniform noise across each grid cell of the columns ``grids``
    names (index -> (step, low, high)), as the flow was trained."""
    rng = np.random.default_rng(seed)
    out = np.array(x, dtype=np.float64, copy=True)
    for j, (step, _, _) in grids.items():
        out[:, j] += (rng.random(out.shape[0]) - 0.5) * step
    return out.astype(np.asarray(x).dtype, copy=False)


def _row_number_columns(x: np.ndarray) -> list[int]:
    """Columns that are exactly 0, 1, ..., n-1 (or 1, ..., n): a saved row index."""
    n = x.shape[0]
    if n < 20:
        return []
    steps = np.arange(n, dtype=x.dtype)
    return [j for j in range(x.shape[1])
            if x[0, j] in (0, 1) and np.array_equal(x[:, j] - x[0, j], steps)]


def _run_columns(run: Path, dim: int, extra: dict[str, Any] | None = None) -> list[str]:
    """The training columns' names: from the run's config, else from the model file (a
    ``realnvp train`` model or a saved estimator), else ``x0, x1, ...``."""
    from realnvp.io import load_with_extra

    def named(columns: Any) -> bool:
        return isinstance(columns, list) and len(columns) == dim

    folder = run if run.is_dir() else None
    if folder is not None and (folder / runs.CONFIG_FILE).is_file():
        columns = runs.read_config(folder).get("columns")
        if named(columns):
            return [str(c) for c in columns]
    if extra is None:  # only now: the model file need not be read again for a run folder
        extra = load_with_extra(run)[1]
    for columns in (extra.get("columns"), (extra.get("estimator") or {}).get("feature_names_in_")):
        if named(columns):
            return [str(c) for c in columns]
    return [f"x{i}" for i in range(dim)]


def _default_columns(run: Path, file: str | Path, dim: int,
                     extra: dict[str, Any] | None = None) -> str | None:
    """The run's training columns, to pick from a file by name; None (by position) when
    the run's columns had no names or the file has none (NPY, a header-less table)."""
    from realnvp.datasets.files import iter_table_chunks

    trained = _run_columns(run, dim, extra)
    if all(re.fullmatch(r"x\d+", c) for c in trained) or trained == ["x", "y"]:
        return None
    names, _ = iter_table_chunks(file, chunk_rows=1)
    if all(re.fullmatch(r"x\d+", c) for c in names):
        return None
    missing = [c for c in trained if c not in names]
    if missing:
        raise ValueError(f"{file}: no column {missing[0]!r} (columns: {', '.join(names[:20])});"
                         f" the model was trained on {', '.join(trained)}: pass --columns to "
                         "pick columns by name or 0-based index")
    return ",".join(trained)


def _check_output(out: Path | None) -> None:
    if out is None:
        return
    if out.is_dir():
        raise ValueError(f"{out}: is a directory; give a file name")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such folder")


def score(run: Path, file: Path, columns: str | None, out: Path | None,
          contamination: float | None, chunk_rows: int) -> None:
    """``realnvp score``: stream FILE in chunks, write log_prob per row."""
    from realnvp.datasets.files import iter_table_chunks
    from realnvp.io import load_with_extra

    if chunk_rows < 1:
        raise ValueError(f"Expected --chunk-rows >= 1; got {chunk_rows}")
    threshold = None
    if contamination is not None:
        threshold = _outlier_threshold(run, contamination)
    flow, extra = load_with_extra(run)
    if columns is None:
        columns = _default_columns(run, file, flow.dim, extra)
    _check_output(out)
    if out is not None and out.suffix.lower() != ".csv":
        raise ValueError(f"{out}: score streams its rows out as CSV; give --out a .csv name")
    names, chunks = iter_table_chunks(file, columns=columns, n_columns=flow.dim,
                                      chunk_rows=chunk_rows)
    from tqdm.auto import tqdm

    bar = tqdm(desc="score", unit=" rows", disable=not sys.stderr.isatty(), mininterval=0.5)

    def write(f: Any) -> None:
        first = True
        for chunk in chunks:
            with torch.inference_mode():
                lp = flow.log_prob(runs.as_tensor(chunk, flow)).numpy()  # the model's precision
            extra = {"log_prob": lp}
            if threshold is not None:
                extra["outlier"] = (lp < threshold).astype(np.int64)
            _write_block(f, names, chunk, extra, header=first)
            first = False
            bar.update(chunk.shape[0])

    try:
        if out is None:
            write(sys.stdout)
        else:
            with atomic_open(out, "w", newline="") as f:
                write(f)
    finally:
        bar.close()
    if out is not None:
        click.echo(str(out), err=True)


def _write_block(f: Any, names: list[str], chunk: np.ndarray, extra: dict[str, np.ndarray],
                 header: bool) -> None:
    import pandas as pd

    frame = pd.DataFrame(chunk, columns=names)
    for key, value in extra.items():
        frame[key] = value
    frame.to_csv(f, header=header, index=False, lineterminator="\n")  # shortest exact text


def _outlier_threshold(run: Path, contamination: float) -> float:
    if not 0 < contamination < 0.5:
        raise ValueError(f"Expected 0 < --contamination < 0.5; got {contamination}")
    path = run / "val_log_prob.npy"
    if not path.is_file():
        raise ValueError(f"{run}: no validation scores (val_log_prob.npy) to set a threshold")
    try:
        scores = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable validation scores ({' '.join(str(e).split())}); "
                         "retrain the run, or leave out --contamination") from None
    if scores.ndim != 1 or scores.dtype.kind != "f" or scores.size == 0:
        raise ValueError(f"{path}: expected a 1-D float array of scores; got {scores.dtype} "
                         f"of shape {scores.shape}")
    return float(np.quantile(scores, contamination))


def evaluate(run: Path, data_spec: str | None, columns: str | None, n_test: int,
             no_baselines: bool) -> None:
    """``realnvp evaluate``: metrics and the baselines table, printed and saved."""
    from realnvp import metrics as m
    from realnvp.training.fit import split

    flow, record = runs.load_run(run)
    config = TrainConfig.from_dict(record["config"])
    source = record["data"]
    given = None  # a file to test on: all its rows; the baselines fit on the run's data
    if data_spec is None or source.get("kind") == "toy" and data_spec == source.get("name"):
        data = runs.reload_data(source, config)
    elif runs.is_toy_name(data_spec):
        data = runs.load_data(data_spec, columns, n_test, config.seed + 20_000, flow.dim)
    else:
        if columns is None:
            columns = _default_columns(run, data_spec, flow.dim)
        given = runs.load_data(data_spec, columns, n_columns=flow.dim)
        if no_baselines:
            data = given
        else:
            try:
                data = runs.reload_data(source, config)
            except (OSError, ValueError) as e:
                raise ValueError(f"the baselines fit on the run's own data, which could not "
                                 f"be read ({e}); pass --no-baselines") from None
    for d in (data, given):
        if d is not None and d.x.shape[1] != flow.dim:
            raise ValueError(f"Expected {flow.dim} columns; got {d.x.shape[1]}")
    generator = torch.Generator().manual_seed(int(config.seed))
    train_rows, val_rows = split(torch.as_tensor(data.x), config.val_fraction, generator)
    train, val = train_rows.numpy(), (val_rows if val_rows is not None else train_rows).numpy()
    toy = data.toy
    if given is not None:
        test, truth = given.x, None
    elif toy is not None:
        xt, _ = toy.sample(int(n_test), seed=int(source.get("seed", 0)) + 10_000)
        test, truth = xt.numpy(), toy.log_prob
    else:
        test, truth = val, None
        if val_rows is not None:
            click.echo(f"test rows: the run's {val.shape[0]} validation rows, which also chose "
                       "the flow's best step and the baselines' settings (slightly optimistic "
                       "for all three); --data FILE scores rows none of them has seen",
                       err=True)
        if val_rows is None:
            click.echo(f"warning: {data.x.shape[0]} rows are too few for a held-out split; "
                       "these figures are on the training rows, so they flatter the model",
                       err=True)
    if no_baselines:
        results = m.evaluate_flow(flow, test, None if truth is None else
                                  truth(torch.as_tensor(test)).numpy())
        table = _flow_only_table(results)
    else:
        from realnvp.baselines import compare

        grids = {} if toy is not None else _grids(run, _run_columns(run, flow.dim), {})
        if grids:
            # The flow learnt these rounded columns with uniform noise across each grid cell;
            # fitted to the raw values, a Gaussian mixture would put spikes on the grid
            # points instead (a density in name only, tens of nats "better" there and
            # astronomically worse between them). The baselines get the same noise.
            train, val = _dequantized(train, grids, config.seed), _dequantized(
                val, grids, config.seed + 1)
            click.echo(f"baselines fit with the flow's dequantization noise on {len(grids)} "
                       "rounded column(s); every model is scored at the raw test rows",
                       err=True)
        table = compare(flow, train, val, test, truth, seed=config.seed)
    import pandas as pd

    with pd.option_context("display.width", 120, "display.max_columns", 20):
        click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    with atomic_open(run / "evaluation.csv", "w", newline="") as f:
        table.to_csv(f, index=False)
    runs.write_json(run / "evaluation.json", table.to_dict(orient="records"))
    click.echo(f"saved {run / 'evaluation.csv'}", err=True)


def _flow_only_table(results: dict[str, Any]) -> Any:
    import pandas as pd

    row: dict[str, Any] = {"model": "realnvp"}
    for key, value in results.items():
        if hasattr(value, "value") and hasattr(value, "stderr"):
            row[key], row[f"{key}_stderr"] = value.value, value.stderr
        elif hasattr(value, "max_deviation"):
            row["hdr_max_deviation"] = value.max_deviation
        elif isinstance(value, (int, float)):
            row[key] = value
    return pd.DataFrame([row])


def plot(run: Path) -> None:
    """``realnvp plot``: redraw the pictures and the report from the saved model and data."""
    flow, record = runs.load_run(run)
    config = TrainConfig.from_dict(record["config"])
    source = record["data"]
    data = runs.reload_data(source, config)
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    _draw(run, flow, data, runs.read_history(run), None, metrics)
    click.echo(str(run))


