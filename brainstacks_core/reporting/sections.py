"""The profile's one report, ``<store>/reports/report.md``, assembled from per-stage section files.

Each stage that has something to report (training, routing, benchmark evaluation, and
whatever is added later) writes its own section with :func:`publish_section`:

* ``reports/sections/<name>.md``: the stage's markdown, each plot path in it replaced
  by an image link relative to ``reports/`` (``![heatmap](../routing/main/router/<key>/heatmap.png)``),
  so the links resolve in a markdown viewer opened on ``report.md``;
* ``reports/sections/<name>.json``: the section's plots (relative to ``reports/``) and
  its lineage inputs (catalog versions).

Then :func:`assemble_report` rebuilds ``report.md`` from every section file there, in
name order (hence the number prefixes: :data:`TRAINING` ``10-``, :data:`ROUTING`
``20-``, :data:`EVALUATION` ``30-``), and records ``report://<profile>`` in the catalog
with the union of the sections' inputs. Both steps write only when the bytes change,
so a re-run with nothing changed leaves every file as it was, byte for byte, and
records the same report version again. Adding a section is one call::

    publish_section(ctx, "40-paper-tables", markdown, plots=[png], inputs=[version], catalog=cat)

The markdown names plots by absolute path (``Plots: /abs/a.png, /abs/b.png`` as every
stage writes them); :func:`~brainstacks_core.reporting.inline.inline_image_links` turns
the links into data URIs for the Prefect artifact.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable

from brainstacks_core.files import atomic_write_text, sha256_file
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.versioning import code_version, content_hash
from brainstacks_core.reporting.inline import place_images

log = logging.getLogger(__name__)

TRAINING, ROUTING, EVALUATION, PAPER = "10-training", "20-routing", "30-evaluation", "40-paper"
"""Section names of the stages (routing and evaluation add ``-<run>``: :func:`run_section`)."""
_NAME = re.compile(r"^\d{2}-[a-z0-9][a-z0-9-]*$")


def reports_dir(ctx: StoreContext) -> Path:
    """``<store>/reports``: ``report.md``, the training plots and ``sections/``."""
    return ctx.store / "reports"


def run_section(stage: str, run_name: str) -> str:
    """The section name of a per-run stage: ``20-routing-main``, ``30-evaluation-no-null-space``."""
    return f"{stage}-{re.sub(r'[^a-z0-9-]+', '-', run_name.lower())}"


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


def link_plots(markdown: str, plots: Iterable[str | Path], base_dir: Path) -> tuple[str, list[str]]:
    """The markdown with each plot path replaced by an image link relative to ``base_dir``.

    Returns:
        ``(markdown, relative plot paths)``; a plot the text does not name is appended under "Plots".
    """
    rel = {str(p): os.path.relpath(Path(p).resolve(), base_dir.resolve()) for p in dict.fromkeys(map(str, plots))}
    images = {p: f"![{Path(p).stem}]({Path(r).as_posix()})" for p, r in rel.items()}
    return place_images(markdown, images, heading="### Plots"), [Path(r).as_posix() for r in rel.values()]


def write_section(ctx: StoreContext, name: str, markdown: str, plots: Iterable[str | Path] = (),
                  inputs: Iterable[str] = ()) -> Path:
    """Write ``reports/sections/<name>.md`` (plots as relative image links) and its ``.json``.

    Args:
        ctx: the profile's store.
        name: ``NN-words`` (two digits then lowercase words and dashes): its place in the report.
        markdown: the section's text, starting with its ``## `` heading; plots named by path.
        plots: PNG files the section shows.
        inputs: catalog versions the section is drawn from (the report's lineage inputs).

    Raises:
        ValueError: a name that is not ``NN-words``.
    """
    if not _NAME.match(name):
        raise ValueError(f"report section name {name!r} must be two digits, a dash and lowercase words "
                         "(e.g. '40-paper-tables')")
    folder = reports_dir(ctx) / "sections"
    text, rel = link_plots(markdown.rstrip("\n"), plots, reports_dir(ctx))
    _write_if_changed(folder / f"{name}.json",
                      json.dumps({"plots": rel, "inputs": list(dict.fromkeys(inputs))}, indent=2) + "\n")
    path = folder / f"{name}.md"
    _write_if_changed(path, text.rstrip("\n") + "\n")
    return path


def read_sections(ctx: StoreContext) -> list[dict]:
    """Every section in report order: ``{"name", "markdown", "plots" (absolute), "inputs"}``."""
    folder, base = reports_dir(ctx) / "sections", reports_dir(ctx)
    out = []
    for md in sorted(folder.glob("*.md")) if folder.exists() else []:
        try:
            meta = json.loads(md.with_suffix(".json").read_text())
        except (OSError, ValueError):
            meta = {"plots": [], "inputs": []}
        out.append({"name": md.stem, "markdown": md.read_text(encoding="utf-8").rstrip("\n"),
                    "plots": [str((base / p).resolve()) for p in meta.get("plots", [])],
                    "inputs": list(meta.get("inputs", []))})
    return out


def assemble_report(ctx: StoreContext, catalog=None, run_ids: dict | None = None) -> dict:
    """Rebuild ``report.md`` from the section files (in name order) and record ``report://<profile>``.

    Idempotent: the same sections give the same bytes (the file is not rewritten) and the
    same catalog version (recorded again under ``run_ids``: a ``used`` event).

    Returns:
        ``{"markdown", "plots" (absolute paths), "path", "version", "sections" (names)}``.
    """
    sections = read_sections(ctx)
    text = "\n\n".join([f"# Brainstacks report: profile `{ctx.name}`", *(s["markdown"] for s in sections)])
    path = reports_dir(ctx) / "report.md"
    if _write_if_changed(path, text + "\n"):
        log.info("report %s: rebuilt from sections %s", path, ", ".join(s["name"] for s in sections))
    plots = list(dict.fromkeys(p for s in sections for p in s["plots"]))
    for p in plots:
        if not Path(p).is_file():
            log.warning("report %s: plot %s is missing (its link stays)", path, p)
    inputs = list(dict.fromkeys(v for s in sections for v in s["inputs"]))
    version = content_hash("report", sorted(inputs), text)
    if catalog is not None:
        catalog.record_artifact(uri=f"report://{ctx.name}", version=version, kind="report", path=str(path),
                                sha256=sha256_file(path), code_version=code_version(), config_hash=None,
                                inputs=inputs, metadata={"plots": plots, "sections": [s["name"] for s in sections]},
                                run_ids=run_ids)
    return {"markdown": text, "plots": plots, "path": str(path), "version": version,
            "sections": [s["name"] for s in sections]}


def publish_section(ctx: StoreContext, name: str, markdown: str, plots: Iterable[str | Path] = (),
                    inputs: Iterable[str] = (), catalog=None, run_ids: dict | None = None) -> dict:
    """:func:`write_section` then :func:`assemble_report`: what a stage calls when it finishes."""
    write_section(ctx, name, markdown, plots, inputs)
    return assemble_report(ctx, catalog, run_ids)
