"""The whole pipeline flow under Prefect on a mini profile: report, plots, run ids, resume, CLI help."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_training_run import _mini_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pipeline_flow_end_to_end(harness, tmp_path):
    from brainstacks_core.lineage.catalog import Catalog
    from flows.pipeline import brainstacks_pipeline

    cfg = _mini_profile(tmp_path)
    raw = yaml.safe_load(cfg.read_text())  # demo's eval section, fewer items
    raw["eval"].update(tasks=["demo_math", "demo_gsm8k"], limit=8, task_limits={"demo_gsm8k": 4})
    cfg.write_text(yaml.safe_dump(raw))
    root = tmp_path / "artifacts"
    report = brainstacks_pipeline(config_path=str(cfg), artifact_root=str(root))
    md = report["markdown"]
    assert "## Rounds (null space)" in md and "## Rounds (no null space)" in md
    assert "Forgetting matrix" in md and "Experiment 1" in md
    assert "## Benchmark evaluation" in md and "| demo_math | acc | 8 |" in md and "| ungated | routed |" in md
    assert any(p.endswith("scores.png") for p in report["plots"])
    for p in report["plots"]:
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, p
    store = root / "mini"
    for run in ("main", "no-null-space"):
        current = json.loads((store / "training" / run / "current.json").read_text())
        m = json.loads((Path(current["dir"]) / "manifest.json").read_text())
        assert all(m["domains"][d]["status"] == "done" for d in ("chat", "math"))
        assert bool(m["domains"]["math"].get("null_space")) == (run == "main")
    cat = Catalog(store / "catalog.duckdb")
    stacks = cat.list_artifacts("stack")
    assert stacks and all(s["flow_run_id"] for s in stacks)
    rep = cat.latest("report://mini")
    assert rep is not None and {a["kind"] for a in cat.upstream(rep["version"])} >= {"stack", "dataset", "base"}
    # the report artifact shows every plot inline (PNG data URIs), not as a path the browser cannot reach
    from test_training_artifacts import _artifacts

    ui = _artifacts(["report-mini"])["report-mini"].data
    names = re.findall(r"!\[([\w-]+)\]\(data:image/png;base64,", ui)
    assert sorted(names) == sorted(Path(p).stem for p in report["plots"]) and ".png" not in ui
    # OpenLineage: the pipeline run and its subflows, each subflow naming the pipeline run as its parent
    events = [json.loads(x) for x in (store / "lineage" / "openlineage.jsonl").read_text().splitlines()]
    top = [e for e in events if e["job"]["name"] == "brainstacks-pipeline"]
    assert [e["eventType"] for e in top] == ["START", "COMPLETE"]
    subs = [e for e in events if e["job"]["name"] != "brainstacks-pipeline"]
    assert {e["job"]["name"] for e in subs} == {"prepare-data", "continual-training", "train-router", "evaluate"}
    done = {e["job"]["name"]: e for e in subs if e["eventType"] == "COMPLETE"}
    assert "eval://mini/main" in {d["name"] for d in done["evaluate"]["outputs"]}
    assert all(e["run"]["facets"]["parent"]["run"]["runId"] == top[0]["run"]["runId"] for e in subs)
    assert {"report://mini", "eval://mini/experiment1"} <= {d["name"] for d in top[1]["outputs"]}

    # running it again recomputes nothing: same stacks, same report version
    again = brainstacks_pipeline(config_path=str(cfg), artifact_root=str(root))
    assert again["markdown"] == md
    assert {s["version"] for s in cat.list_artifacts("stack")} == {s["version"] for s in stacks}


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0
    for cmd in ("prepare", "train", "run", "audit"):
        assert cmd in out.stdout
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "audit"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert bad.returncode == 2 and "one of the arguments" in bad.stderr
