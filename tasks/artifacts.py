"""Markdown and table artifacts for the Prefect UI: plots inlined, sizes logged.

The UI runs in a browser that cannot read the worker's files, so
:func:`markdown_artifact` replaces plot paths with the images themselves
(``brainstacks_core.reporting.inline``: small data-URI PNGs) before creating the
artifact; the markdown returned to the CLI and written to report.md keeps the paths.
:func:`report_artifact` publishes the profile's assembled report (``report-<profile>``),
its relative image links inlined the same way, each time a stage rebuilds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_logger

from brainstacks_core.reporting.inline import inline_image_links, inline_plots

log = get_logger("brainstacks.artifacts")


def markdown_artifact(key: str, markdown: str, plots: Iterable[str] = (), description: str | None = None) -> UUID:
    """Create a markdown artifact with ``plots`` shown inline (see the module docstring)."""
    text = inline_plots(markdown, plots)
    log.info("artifact %s: %d bytes of markdown (%d bytes before inlining the plots)", key, len(text.encode()),
             len(markdown.encode()))
    return create_markdown_artifact(key=key, markdown=text, description=description)


def table_artifact(key: str, rows: list[dict], description: str | None = None) -> UUID:
    """Create a table artifact (one dict per row; the UI shows the keys as columns)."""
    return create_table_artifact(key=key, table=rows, description=description)


REPORT_DESCRIPTION = ("Brainstacks report ({}): " + "the sections so far ({}): training (round losses, forgetting "
                      "matrix, Experiment 1), routing, benchmark evaluation; also at {}")


def report_artifact(profile_name: str, report: dict) -> UUID:
    """The markdown artifact ``report-<profile>`` of the assembled report (``assemble_report``'s dict).

    The report's image links are relative to its folder; they become data URIs here.
    """
    key = f"report-{profile_name}".replace("_", "-").replace(".", "-").lower()
    text = inline_image_links(report["markdown"], Path(report["path"]).parent)
    log.info("artifact %s: %d bytes of markdown (%d bytes before inlining the plots)", key, len(text.encode()),
             len(report["markdown"].encode()))
    return create_markdown_artifact(key=key, markdown=text, description=REPORT_DESCRIPTION.format(
        profile_name, ", ".join(report.get("sections", [])), report["path"]))
