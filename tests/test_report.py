"""The HTML report: self-contained, escaped, written atomically."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from realnvp.report import CAPTIONS, write_report


def _image_bytes(fmt: str, frames: int = 1) -> bytes:
    images = [Image.new("RGB", (8, 6), (40 * i, 100, 200)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=frames > 1, append_images=images[1:])
    return buffer.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    out = {"density": tmp_path / "density.png", "layers": tmp_path / "layers.png",
           "training": tmp_path / "training.gif"}
    out["density"].write_bytes(_image_bytes("PNG"))
    out["layers"].write_bytes(_image_bytes("PNG"))
    out["training"].write_bytes(_image_bytes("GIF", frames=3))
    return out


def test_report_embeds_every_image_as_a_data_uri(tmp_path, images):
    path = write_report(tmp_path, images, {"val_nll": 1.234567}, {"steps": 100})
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    for name, image in images.items():
        mime = "image/gif" if image.suffix == ".gif" else "image/png"
        encoded = base64.b64encode(image.read_bytes()).decode()
        assert f'src="data:{mime};base64,{encoded}"' in page, name
        assert CAPTIONS[name][:40].replace("'", "&#x27;") in page
    assert "http://" not in page and "https://" not in page  # nothing external
    assert "<script" not in page and 'rel="stylesheet"' not in page


def test_report_escapes_all_text(tmp_path, images):
    config = {"data": "<script>alert('x')</script>", "nested": {"a&b": [1, 2]}}
    page = write_report(tmp_path, images, {"<b>nll</b>": 1.0}, config,
                        title="Run <1> & co").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>nll</b>" not in page and "&lt;b&gt;nll&lt;/b&gt;" in page
    assert "<title>Run &lt;1&gt; &amp; co</title>" in page
    assert "a&amp;b" in page


def test_report_shows_a_summary_metrics_and_config(tmp_path):
    metrics = pd.DataFrame([{"split": "train", "nll": 1.5}, {"split": "val", "nll": math.nan}])
    page = write_report(tmp_path, {}, metrics, {"layers": 8, "steps": 3000, "lr": 0.002}
                        ).read_text(encoding="utf-8")
    assert "layers 8, steps 3000, lr 0.002" in page
    assert "<th>split</th><th>nll</th>" in page and '<td class="num">1.5</td>' in page
    assert '"steps": 3000' in page.replace("&quot;", '"')
    empty = write_report(tmp_path, {}, None, None).read_text(encoding="utf-8")
    assert "No metrics were recorded" in empty


def test_report_leaves_no_temporary_files(tmp_path, images):
    before = {p.name for p in tmp_path.iterdir()}
    write_report(tmp_path, images, {"nll": 1.0}, {})
    write_report(tmp_path, images, {"nll": 0.9}, {})  # overwrite in place
    assert {p.name for p in tmp_path.iterdir()} == before | {"report.html"}


def test_report_resolves_relative_paths_and_rejects_missing_images(tmp_path, images):
    page = write_report(tmp_path, {"density": "density.png"}, None, {}).read_text()
    assert "data:image/png;base64," in page
    with pytest.raises(FileNotFoundError, match="'latent'"):
        write_report(tmp_path, {"latent": tmp_path / "latent.png"}, None, {})
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="Expected an image file"):
        write_report(tmp_path, {"notes": "notes.txt"}, None, {})


def test_summary_line_of_a_run_config(tmp_path):
    """A run's config.json nests the options under "config" and the data under "data"; the
    resolved device at the top wins over the option's "auto"."""
    record = {"config": {"layers": 8, "coupling": "spline", "ensemble": 2, "device": "auto"},
              "data": {"kind": "toy", "name": "checkerboard", "n": 100},
              "preset": "accurate", "device": "cpu"}
    text = write_report(tmp_path, {}, {"val_nll": 1.0}, record).read_text()
    assert ("data checkerboard, preset accurate, layers 8, coupling spline, ensemble 2, "
            "device cpu.") in text
