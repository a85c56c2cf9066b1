"""One report per profile (issue 19 item 5): section files assembled into ``reports/report.md``.

Synthetic manifests and plots, no model: training writes its section, routing and evaluation add theirs,
the report carries all three in order with image links that resolve from ``reports/``, rebuilding it with
nothing changed leaves its bytes and catalog version as they were, and its lineage lists every section's
inputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from test_plots import _manifest

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.reporting.inline import inline_image_links
from brainstacks_core.reporting.report import build_report
from brainstacks_core.reporting.sections import (EVALUATION, ROUTING, assemble_report, publish_section,
                                                 run_section, write_section)

LINK = re.compile(r"!\[([\w-]+)\]\(([^)]+)\)")


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1, 2], [2, 1, 3])
    fig.savefig(path, format="png", dpi=60)
    return path


def _record(cat, version: str, kind: str) -> None:
    if cat is not None:
        cat.record_artifact(uri=f"{kind}://rep/{version}", version=version, kind=kind, path=None, sha256=None,
                            code_version="test", config_hash=None)


def _trained_store(tmp_path: Path, cat=None) -> StoreContext:
    """A store with one trained run ``main`` (synthetic manifest: 3 domains, 2 rounds each)."""
    ctx = StoreContext(name="rep", store=tmp_path / "rep", repo_root=tmp_path)
    m = _manifest(0.0)
    for dom in m["domains_order"]:
        for r in m["domains"][dom]["rounds"]:
            r.update(reason="val loss improved", stack_id=f"{dom}-r{r['round']}", version=f"v-{dom}-{r['round']}")
            _record(cat, r["version"], "stack")
    run = ctx.store / "training" / "main" / "k1"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(m))
    (run.parent / "current.json").write_text(json.dumps({"dir": str(run)}))
    return ctx


def _stage_sections(ctx: StoreContext, cat) -> dict:
    """What routing and evaluation publish when they finish: their markdown naming plots by absolute path."""
    heat = _png(ctx.store / "routing" / "main" / "router" / "abc" / "heatmap.png")
    test_heat = _png(ctx.store / "routing" / "main" / "routing_heatmap_test.png")
    scores = _png(ctx.store / "eval" / "main" / "e1" / "scores.png")
    _record(cat, "routing-eval-v1", "eval")
    _record(cat, "eval-v1", "eval")
    publish_section(ctx, run_section(ROUTING, "main"), f"## Routing (oracle)\n\nrouted table\n\nPlots: {heat}, "
                    f"{test_heat}", [heat, test_heat], ["routing-eval-v1"], cat)
    return publish_section(ctx, run_section(EVALUATION, "main"), f"## Benchmark evaluation\n\n| t |\n\nPlot: {scores}",
                           [scores], ["eval-v1"], cat)


def test_one_report_carries_training_routing_and_evaluation_with_resolving_plots(tmp_path):
    cat = Catalog(tmp_path / "catalog.duckdb")
    ctx = _trained_store(tmp_path, cat)
    first = build_report(ctx, ["main"], cat)
    assert first["sections"] == ["10-training"] and "## Rounds (null space)" in first["markdown"]
    report = _stage_sections(ctx, cat)
    path = Path(report["path"])
    assert path == ctx.store / "reports" / "report.md"
    text = path.read_text()
    assert report["sections"] == ["10-training", "20-routing-main", "30-evaluation-main"]
    order = [text.index(h) for h in ("# Brainstacks report: profile `rep`", "## Rounds (null space)",
                                     "## Forgetting matrix", "## Routing (oracle)", "## Benchmark evaluation")]
    assert order == sorted(order)
    # every plot is an image link relative to reports/ that resolves to the stage's own file
    links = LINK.findall(text)
    assert [alt for alt, _ in links] == ["forgetting", "rounds-main", "heatmap", "routing_heatmap_test", "scores"]
    for alt, src in links:
        assert not Path(src).is_absolute() and (path.parent / src).resolve().is_file(), src
    assert "../routing/main/router/abc/heatmap.png" in text and "../eval/main/e1/scores.png" in text
    assert str(ctx.store) not in text  # no absolute path left in the file
    assert sorted(report["plots"]) == sorted(str((path.parent / s).resolve()) for _, s in links)
    # the per-stage training plots stay beside the report
    assert (ctx.store / "reports" / "forgetting.png").is_file()
    # lineage: the report's inputs are every section's inputs (stacks, routing evaluation, evaluation)
    rec = cat.latest("report://rep")
    assert rec["version"] == report["version"] and rec["path"] == str(path)
    direct = {a["version"] for a in cat.upstream(rec["version"]) if a["depth"] == 1}
    assert direct == {f"v-{d}-{r}" for d in ("chat", "code", "math") for r in (1, 2)} | {"routing-eval-v1", "eval-v1"}


def test_rebuilding_with_nothing_changed_leaves_the_bytes_and_version(tmp_path):
    cat = Catalog(tmp_path / "catalog.duckdb")
    ctx = _trained_store(tmp_path, cat)
    build_report(ctx, ["main"], cat)
    first = _stage_sections(ctx, cat)
    files = {p: p.read_bytes() for p in (ctx.store / "reports").rglob("*") if p.is_file()}
    stamps = {p: p.stat().st_mtime_ns for p in files}
    versions = len(cat.list_artifacts("report"))  # one per rebuild that changed it: training, +routing, +eval
    assert versions == 3
    build_report(ctx, ["main"], cat)  # the stages finish again with the same results
    again = _stage_sections(ctx, cat)
    assert again["version"] == first["version"] and again["markdown"] == first["markdown"]
    assert {p: p.read_bytes() for p in files} == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing rewritten at all
    assert len(cat.list_artifacts("report")) == versions
    # a changed section changes the report, in its place
    publish_section(ctx, run_section(EVALUATION, "main"), "## Benchmark evaluation\n\nnew scores", [], ["eval-v2"], cat)
    text = (ctx.store / "reports" / "report.md").read_text()
    assert "new scores" in text and text.index("## Routing (oracle)") < text.index("new scores")
    assert "| t |" not in text and len(cat.list_artifacts("report")) == versions + 1


def test_adding_a_section_is_one_call_and_names_are_checked(tmp_path):
    ctx = StoreContext(name="rep", store=tmp_path / "rep", repo_root=tmp_path)
    png = _png(tmp_path / "rep" / "paper" / "table.png")
    out = publish_section(ctx, "40-paper-tables", "## Paper tables\n\n| a |", [png], ["x"])
    assert out["sections"] == ["40-paper-tables"]
    assert "![table](../paper/table.png)" in out["markdown"]  # not named in the text: appended under Plots
    with pytest.raises(ValueError, match="two digits"):
        write_section(ctx, "paper tables", "## x")


def test_the_artifact_inlines_the_relative_links(tmp_path):
    ctx = _trained_store(tmp_path)
    build_report(ctx, ["main"])
    report = _stage_sections(ctx, None)
    ui = inline_image_links(report["markdown"], Path(report["path"]).parent)
    names = re.findall(r"!\[([\w-]+)\]\(data:image/png;base64,", ui)
    assert sorted(names) == sorted(Path(p).stem for p in report["plots"]) and ".png" not in ui
    assert assemble_report(ctx)["markdown"] == report["markdown"]
