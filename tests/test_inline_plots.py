"""Plots as data URIs in markdown (what the Prefect UI can show): small, and placed where the paths were."""

from __future__ import annotations

import base64
import io

from matplotlib.figure import Figure
from PIL import Image

from brainstacks_core.reporting.inline import inline_plots, png_data_uri


def _plot(path, width_in=8.0):
    fig = Figure(figsize=(width_in, 4))
    ax = fig.add_subplot()
    ax.plot(range(100), [i * i for i in range(100)])
    ax.imshow([[i * j for i in range(20)] for j in range(20)], extent=(0, 50, 0, 5000), aspect="auto")
    fig.savefig(path, format="png", dpi=110)
    return path


def test_data_uri_is_a_small_png_at_80_dpi(tmp_path):
    png = _plot(tmp_path / "a.png")
    uri = png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as img, Image.open(png) as orig:
        assert img.format == "PNG" and img.width == round(orig.width * 80 / 110)
    assert len(data) < 0.6 * png.stat().st_size


def test_paths_become_images_in_place_and_unmentioned_plots_are_appended(tmp_path):
    a, b, c = (_plot(tmp_path / f"{n}.png", 4) for n in "abc")
    missing = tmp_path / "missing.png"
    md = f"# Report\n\nsome text\n\nPlots: {a}, {b}\n\nnot drawn: {missing}\n\nend"
    out = inline_plots(md, [a, b, c, missing])
    lines = out.split("\n")
    assert lines[:5] == ["# Report", "", "some text", "", "Plots:"]
    assert [x.split("](")[0] for x in lines if x.startswith("![")] == ["![a", "![b", "![c"]
    assert out.index("![b") < out.index("end") < out.index("## Plots") < out.index("![c")
    assert str(a) not in out
    assert f"not drawn: {missing}" in out and out.count("missing") == 1  # a missing file stays a path, once
    assert inline_plots("no plots here", []) == "no plots here"
