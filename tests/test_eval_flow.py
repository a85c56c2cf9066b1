"""``brainstacks eval`` and the ``evaluate`` flow on a tiny trained run (issue 11): the paths users take.

0. Before training: ``--mode base`` scores the base alone; ungated says to train first.
1. The real CLI before the router trains: base and ungated scored, routed skipped
   with the reason; the table with standard errors, paired tests, MDD, plot path.
2. The meta-router trains; the ``evaluate`` flow (prefect_test_harness) scores routed
   mode with it and reuses every base and ungated request the CLI scored; its
   progress artifact reaches 100 %, its markdown artifact has the table and the plot;
   the catalog's ``eval://`` artifact lists the router, the stacks, the base and the
   benchmark versions upstream.
3. A re-run of the flow scores nothing (no request, no routing decision computed).
4. A bad mode is named by the flow before its task starts.
5. A router trained on other stack versions than the run now has is not used for routed mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_route_flow import _profile as route_profile

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile
from brainstacks_core.training.run import train_profile

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path) -> Path:
    """The routing tests' two-domain tiny profile, named evalmini, with a small eval section."""
    raw = yaml.safe_load(route_profile(tmp_path).read_text())
    raw["name"] = "evalmini"
    raw["router"]["exhaustive_sample"] = 0
    raw["eval"] = {"tasks": ["demo_math", "demo_gsm8k"], "limit": 6, "task_limits": {"demo_gsm8k": 3},
                   "demo_items": 8, "bootstrap_iters": 50}
    path = tmp_path / "evalmini.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key}"
    return max(found, key=lambda a: a.created)


@pytest.mark.slow
def test_eval_cli_and_flow_on_a_trained_run(tmp_path, harness, capsys):
    from brainstacks_core.routing.run import route_profile
    from flows.cli import main
    from flows.evaluate import evaluate

    cfg, art = _profile(tmp_path), tmp_path / "art"
    profile = load_profile(cfg, artifact_root=art)
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)

    # 0. before training: base mode scores the base alone; other modes say what to run first
    common = ["eval", "--config", str(cfg), "--artifact-root", str(art), "--tasks", "demo_math", "--limit", "2"]
    assert main([*common, "--mode", "base"]) == 0
    assert "| demo_math | acc | 2 | " in capsys.readouterr().out
    assert main([*common, "--mode", "base,ungated"]) == 1
    assert "has not trained yet" in capsys.readouterr().err

    # a broken benchmark file: the CLI names the file, the line and the field; nothing is converted or cached
    import json

    bench = tmp_path / "bench" / "arc"
    bench.mkdir(parents=True)
    good = {"query": "Question: Which is a liquid?\nAnswer:", "choices": ["ice", "water", "rock", "salt"], "gold": 1}
    rows = [json.dumps(good), json.dumps(good), '{"query": "Question: broken', json.dumps(good)]
    (bench / "arc_easy.jsonl").write_text("\n".join(rows) + "\n")
    raw = yaml.safe_load(cfg.read_text())
    raw["eval"]["data_dir"] = str(tmp_path / "bench")
    broken_cfg = tmp_path / "broken.yaml"
    broken_cfg.write_text(yaml.safe_dump(raw))
    broken = ["eval", "--config", str(broken_cfg), "--artifact-root", str(art), "--tasks", "arc_easy", "--mode", "base"]
    assert main(broken) == 1
    assert f"{bench / 'arc_easy.jsonl'}:3: not a JSON object" in capsys.readouterr().err
    rows[2] = json.dumps({k: v for k, v in good.items() if k != "gold"})
    (bench / "arc_easy.jsonl").write_text("\n".join(rows) + "\n")
    assert main(broken) == 1
    assert f"{bench / 'arc_easy.jsonl'}:3: field 'gold' missing" in capsys.readouterr().err
    converted = art / "evalmini" / "eval" / "data"
    assert list(converted.glob("demo_math-*")) and not list(converted.glob("arc_easy-*"))

    train_profile(profile.training_setup, catalog=cat)

    # 1. the CLI, before any router exists
    assert main(["eval", "--config", str(cfg), "--artifact-root", str(art)]) == 0
    out = capsys.readouterr().out
    assert "Mode `routed` skipped: run 'main' has no trained meta-router" in out
    assert "brainstacks train-router --config" in out
    for part in ("| demo_math | acc | 6 | ", " ± ", "| demo_gsm8k | exact_match,strict-match | 3 |",
                 "Paired tests", "| MDD |", "| base | ungated |"):
        assert part in out, part
    plot = Path(out.split("\nplot: ")[1].strip())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 2. the router trains; the flow scores routed mode and reuses what the CLI scored
    route_profile(profile.routing_setup, "main", cat, progress=False)
    first = evaluate(config_path=str(cfg), artifact_root=str(art))
    assert first["skipped"] == {}
    pm = first["per_mode"]
    assert pm["base"]["computed"] == 0 and pm["ungated"]["computed"] == 0 and pm["base"]["reused"] > 0
    assert pm["routed"]["computed"] > 0 and pm["routed"]["routes_computed"] > 0
    assert "| demo_math | acc | 6 | " in first["markdown"] and "| ungated | routed |" in first["markdown"]

    progress = _artifact("eval-evalmini-main")
    assert progress.data == pytest.approx(100.0) and "done: Requests: base 0 computed" in progress.description
    assert f"routed {pm['routed']['computed']} computed" in progress.description  # the final state, not a step
    report = _artifact("eval-report-evalmini-main")
    assert "Paired tests" in report.data and "](data:image/png;base64,iVBOR" in report.data

    ev = cat.latest("eval://evalmini/main")
    assert ev["version"] == first["version"]
    up = {a["uri"] for a in cat.upstream(ev["version"])}
    assert {"router://evalmini/main", "base://evalmini", "benchmark://evalmini/demo_math/test",
            "benchmark://evalmini/demo_gsm8k/test"} <= up, up
    assert {u for u in up if u.startswith("stack://evalmini/main/")}, up
    items = cat.eval_items(first["version"])
    assert set(items["mode"]) == {"base", "ungated", "routed"} and len(items) > 0

    # 3. a re-run scores nothing
    again = evaluate(config_path=str(cfg), artifact_root=str(art))
    assert again["computed"] == 0 and again["per_mode"]["routed"]["routes_computed"] == 0
    assert again["version"] == first["version"] and again["markdown"] == first["markdown"]

    # 4. a bad request is named before the task starts
    with pytest.raises(ValueError, match="unknown eval mode 'fast'"):
        evaluate(config_path=str(cfg), artifact_root=str(art), modes=["base", "fast"])

    # 5. after a retrain (other stack versions), the old router is not used
    from brainstacks_core.evaluation.run import load_run, run_router

    run = load_run(profile.training_setup, "main", cat)
    assert run_router(profile.routing_setup, "main", run, cat)[0] is not None
    retrained = {**run, "stack_versions": {**run["stack_versions"], next(iter(run["stack_versions"])): "v-new"}}
    router, why = run_router(profile.routing_setup, "main", retrained, cat)
    assert router is None and "trained on other stack versions" in why and "train-router" in why


def test_evaluate_form_and_deployments():
    """The Prefect form offers profiles, modes and tasks with a description per field; every evaluate-*
    deployment points at an existing profile, and the triggered ones follow their profile's route-* run."""
    from prefect.utilities.callables import parameter_schema

    from brainstacks_core.evaluation.suite import available
    from flows.evaluate import evaluate
    from flows.params import PROFILES

    props = parameter_schema(evaluate).model_dump()["properties"]
    assert props["config_path"]["enum"] == PROFILES
    assert all(p.get("description") for p in props.values()), [k for k, p in props.items() if not p.get("description")]
    assert props["modes"]["anyOf"][0]["items"]["enum"] == ["base", "ungated", "routed"]
    assert set(props["tasks"]["anyOf"][0]["items"]["enum"]) == {*available(), "mmlu_medical", "demo"}

    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    evals = {n: d for n, d in deployments.items() if n.startswith("evaluate-")}
    assert set(evals) == {"evaluate-demo", "evaluate-shared", "evaluate-tinyllama-paper-local", "evaluate-gemma3-12b-paper-local"}
    for name, d in evals.items():
        assert d["entrypoint"] == "flows/evaluate.py:evaluate"
        profile = load_profile(ROOT / d["parameters"]["config_path"])
        assert name == f"evaluate-{profile.name}" and profile.eval.tasks
        assert not d.get("triggers")  # a data change reaches evaluation through retrain-*'s downstream subflows
    for name, d in deployments.items():
        if name.startswith("retrain-"):  # the chain after a data change: train, then router and evaluation
            assert d["parameters"]["downstream"] is True, name
        if name.startswith(("route-", "evaluate-")):
            assert not d.get("triggers"), f"{name}: a trigger would run it a second time after a retraining"
