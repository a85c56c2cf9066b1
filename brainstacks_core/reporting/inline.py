"""Plots inside markdown: PNG files as small ``data:`` URIs, for UIs that cannot reach the files.

The Prefect UI renders a markdown artifact in the browser, which has no access to
the worker's disk, so a plot's file path shows as text. :func:`inline_plots`
replaces each plot path in the markdown with an image whose source is the PNG
itself, re-encoded small: scaled to ~80 dpi (the files are written at 110) and at
most ``max_width`` pixels wide, as a 256-colour palette PNG. A forgetting heatmap
or a round-loss plot comes to ~10-40 KB (~14-55 KB of base64); the report's four
plots stay well under 0.5 MB. The files on disk and the report.md are unchanged.
Memory: one decoded image at a time (width x height x 4 bytes, ~2 MB for a
1000 x 500 plot); nothing depends on model shapes.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


def png_data_uri(path: str | Path, dpi: float = 80.0, max_width: int = 720) -> str:
    """``data:image/png;base64,...`` of a PNG file, scaled to ``dpi`` and ``max_width`` pixels.

    Args:
        path: a PNG file (matplotlib's, with its dpi in the header; 110 assumed otherwise).
        dpi: the resolution the image is shown at.
        max_width: an upper bound on the width in pixels.
    """
    from PIL import Image

    with Image.open(path) as img:
        file_dpi = float((img.info.get("dpi") or (110.0,))[0]) or 110.0
        scale = min(1.0, dpi / file_dpi, max_width / img.width)
        rgb = img.convert("RGB")
        if scale < 1.0:
            rgb = rgb.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        small = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def place_images(markdown: str, images: dict[str, str], heading: str = "## Plots") -> str:
    """The markdown with every line that names a key of ``images`` followed by that key's image markdown.

    The paths leave the line (``Plots: a.png, b.png`` becomes ``Plots:`` and one image
    paragraph per plot); an image the text does not mention is appended under ``heading``.

    Args:
        markdown: text that names plots by path.
        images: ``{path as the text names it: image markdown (``![stem](src)``)}``.
    """
    out, used = [], set()
    for line in markdown.split("\n"):
        hits = [p for p in images if p in line]
        if not hits:
            out.append(line)
            continue
        label = line
        for p in hits:
            label = label.replace(p, "")
        label = label.strip(" ,;")
        out += ([label] if label else []) + [x for p in hits for x in ("", images[p])] + [""]
        used.update(hits)
    rest = [img for p, img in images.items() if p not in used]
    return "\n".join(out) + (f"\n\n{heading}\n\n" + "\n\n".join(rest) + "\n" if rest else "")


def inline_plots(markdown: str, plots: Iterable[str | Path], dpi: float = 80.0, max_width: int = 720) -> str:
    """The markdown with every line that names a plot's path followed by the images themselves.

    The paths leave the line (``Plots: a.png, b.png`` becomes ``Plots:`` and one image
    paragraph per plot); a plot the text does not mention is appended under
    "Plots"; a missing file stays a path (logged).

    Returns:
        Markdown for a UI (Prefect artifacts); the caller keeps the original for files and terminals.
    """
    images: dict[str, str] = {}
    for p in dict.fromkeys(str(p) for p in plots):
        if Path(p).is_file():
            images[p] = f"![{Path(p).stem}]({png_data_uri(p, dpi, max_width)})"
        else:
            log.warning("plot %s is missing: left as a path", p)
    return place_images(markdown, images)


_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def inline_image_links(markdown: str, base_dir: str | Path, dpi: float = 80.0, max_width: int = 720) -> str:
    """The markdown with every relative PNG image link (``![x](../routing/heat.png)``) made a data URI.

    Links resolve against ``base_dir`` (the folder of the markdown file, e.g. ``<store>/reports``);
    a link whose file is missing, and any non-relative link, stays as it is (logged when missing).
    """
    base = Path(base_dir)
    cache: dict[str, str] = {}

    def swap(m: re.Match) -> str:
        alt, src = m.group(1), m.group(2)
        if src.startswith(("data:", "http:", "https:", "/")):
            return m.group(0)
        if src not in cache:
            path = base / src
            if not path.is_file():
                log.warning("image %s is missing: link left as it is", path)
                return m.group(0)
            cache[src] = png_data_uri(path, dpi, max_width)
        return f"![{alt}]({cache[src]})"

    return _LINK.sub(swap, markdown)
