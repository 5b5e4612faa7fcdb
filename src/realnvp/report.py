"""A one-file HTML report of a training run: pictures, final metrics and config, no links."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from realnvp.io import atomic_write_bytes

__all__ = ["CAPTIONS", "REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"

CAPTIONS: dict[str, str] = {
    "data_vs_samples": (
        "Training data (left, coloured by label if labels were given) beside as many samples "
        "drawn from the trained flow (right), on the same axes. A good model's samples cover "
        "the same shapes with the same spread, and put no mass in empty regions. For more "
        "than two features: a pair plot of the first few, data in blue, samples in orange."
    ),
    "density": (
        "The model's log-density log p(x) on a grid, with the training data as white dots. "
        "Bright is likely; the colour scale stops some nats below the maximum (see its "
        "bar), so the dark background means 'essentially impossible'. The bright region "
        "should hug the data; thin bright bridges between clusters are the flow's continuity "
        "showing (it cannot fully separate them)."
    ),
    "true_density": (
        "The true log-density of the data-generating distribution, on the same grid and "
        "colour scheme as the model's: compare the two side by side."
    ),
    "latent": (
        "Left: the data mapped to latent space, z = f(x), coloured by label, over the "
        "standard normal's 1, 2 and 3 sigma circles; a good fit is a round Gaussian cloud "
        "(about 39%, 86% and 99% of points inside the circles). Right: Gaussian samples mapped "
        "back to data space, coloured by the angle of their z (the faint colour wheel on the "
        "left is the key): it shows which direction of the latent space becomes which part of "
        "the data, and sharp colour changes show where the flow tears space to separate modes."
    ),
    "layers": (
        "The flow at work, layer by layer: the data (coloured by label) and a regular grid "
        "laid over it, pushed through each layer in turn, from the input to the latent space. "
        "Each affine coupling moves points along one axis by an amount that depends on the "
        "other, so straight grid lines bend; step by step the data is untangled into a "
        "Gaussian. Each panel has its own scale."
    ),
    "training_curve": (
        "Mean negative log-likelihood (nats per row, lower is better) of the training batches "
        "and of the validation set against the step, with the learning rate on the right "
        "(log scale). The star marks the best validation step (realnvp.fit keeps those "
        "weights). A validation curve rising while training falls means over-fitting."
    ),
    "training": (
        "Animation of training: the model's log-density (left) and samples from a fixed batch "
        "of latent points pushed through the current flow (right, orange over the data in "
        "grey), from the untrained flow to the end."
    ),
}

_HEADINGS = {"data_vs_samples": "Data and samples", "density": "Model density",
             "true_density": "True density", "latent": "Latent space",
             "layers": "Layer by layer", "training_curve": "Training curve",
             "training": "Training animation"}

_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg",
         ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".webp": "image/webp"}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.95em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0 2.5em; } figure img { max-width: 100%; height: auto;
       border: 1px solid #eee; } figcaption { color: #444; max-width: 60em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.9em; }
"""


def write_report(
    run_dir: str | os.PathLike[str],
    images: Mapping[str, str | os.PathLike[str]],
    metrics: Mapping[str, Any] | pd.DataFrame | None,
    config: Mapping[str, Any] | None,
    title: str = "RealNVP training report",
) -> Path:
    """Write ``run_dir/report.html``: one self-contained page; returns its path.

    Every image (PNG, GIF, ...) is embedded as a base64 data URI with a caption saying
    what it shows and how to read it (``CAPTIONS``, looked up by name, then by file stem),
    so the file can be mailed or archived alone; it has no external CSS or JavaScript.
    ``metrics`` (a dict or a DataFrame) becomes a table, ``config`` pretty JSON; all text is
    escaped. Relative image paths are taken relative to ``run_dir``. Written atomically.

    Example:
        >>> import tempfile
        >>> path = write_report(tempfile.mkdtemp(), {}, {"val_nll": 1.25}, {"steps": 100})
        >>> path.name, "1.25" in path.read_text()
        ('report.html', True)
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dict(config or {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><p class=\"meta\">{_e(_summary(config))}<br>"
        f"Report written {_e(_now())} in {_e(str(run_dir.resolve()))}</p></header>",
        "<section><h2>Final metrics</h2>", _metrics_table(metrics), "</section>",
    ]
    if images:
        parts.append("<section><h2>Pictures</h2>")
        parts += [_figure(name, _image_path(run_dir, name, path)) for name, path in images.items()]
        parts.append("</section>")
    parts += ["<section><h2>Configuration</h2>",
              f"<pre>{_e(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre>",
              "</section></body></html>"]
    path = run_dir / REPORT_FILE
    atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
    return path


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


_SUMMARY_KEYS = ("data", "dataset", "preset", "layers", "n_layers", "hidden", "coupling",
                 "ensemble", "steps", "batch_size", "lr", "device", "seed")


def _summary(config: Mapping[str, Any]) -> str:
    """One line saying what was trained, from the config keys it recognises (a run's
    ``config.json`` nests the training options under ``config``, the data under ``data``)."""
    nested = config.get("config")
    config = {**(nested if isinstance(nested, Mapping) else {}), **config}
    data = config.get("data")
    if isinstance(data, Mapping):
        config["data"] = data.get("name") or data.get("path") or "?"
    found = [f"{key} {_format(config[key])}" for key in _SUMMARY_KEYS
             if config.get(key) is not None]
    return "A RealNVP normalizing flow" + (": " + ", ".join(found) if found else "") + "."


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (int, str)):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _format(value.item())
    return json.dumps(value, default=str)


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    opening = '<td class="num">' if numeric else "<td>"
    return f"{opening}{_e(_format(value))}</td>"


def _metrics_table(metrics: Mapping[str, Any] | pd.DataFrame | None, max_rows: int = 50) -> str:
    if metrics is None or len(metrics) == 0:
        return "<p>No metrics were recorded.</p>"
    if isinstance(metrics, pd.DataFrame):
        shown = metrics.tail(max_rows)
        note = (f"<p>Last {max_rows} of {len(metrics)} rows.</p>"
                if len(metrics) > max_rows else "")
        head = "".join(f"<th>{_e(str(c))}</th>" for c in shown.columns)
        rows = ["<tr>" + "".join(_cell(_plain(v)) for v in row) + "</tr>"
                for row in shown.itertuples(index=False)]
        return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"
    rows = [f"<tr><th>{_e(str(k))}</th>{_cell(_plain(v))}</tr>" for k, v in metrics.items()]
    return f"<table><tr><th>metric</th><th>value</th></tr>{''.join(rows)}</table>"


def _plain(value: Any) -> Any:
    """numpy / torch scalars to Python numbers, so they format and align like numbers."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def _image_path(run_dir: Path, name: str, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = run_dir / path
    if not path.is_file():
        raise FileNotFoundError(f"Expected the image {name!r} at {path}; no such file")
    if path.suffix.lower() not in _MIME:
        raise ValueError(
            f"Expected an image file ({', '.join(_MIME)}) for {name!r}; got {path.name}"
        )
    return path


def _figure(name: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(name) or CAPTIONS.get(path.stem, "")
    heading = _HEADINGS.get(name) or _HEADINGS.get(path.stem) or name.replace("_", " ").capitalize()
    return (f'<figure id="{_e(name)}"><img src="data:{_MIME[path.suffix.lower()]};base64,{data}" '
            f'alt="{_e(heading)}"><figcaption><b>{_e(heading)}.</b> {_e(caption)}'
            "</figcaption></figure>")
