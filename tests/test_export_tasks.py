"""``brainstacks eval export-tasks`` (issue 19 item 5): task YAMLs that lm-eval's own CLI runs.

The demo profile's tasks are exported, then ``python -m lm_eval --model hf --include_path DIR`` scores
the demo's tiny base (an HF folder, briefly pretrained here) on them, and its numbers are the ones
``brainstacks eval --mode base`` gets on the same items.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path) -> Path:
    """configs/demo.yaml with a 5-step base and 12 generated items per task, stored under tmp_path."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["base"]["tiny"]["pretrain_steps"] = 5
    raw["eval"]["demo_items"] = 12
    raw["artifact_root"] = str(tmp_path / "artifacts")
    path = tmp_path / "demo-small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_exported_yamls_are_standalone(tmp_path):
    """Every template becomes a named task; no placeholder data path; functions and includes resolved."""
    from brainstacks_core.evaluation.config import EvalConfig
    from brainstacks_core.evaluation.export import export_tasks

    out = tmp_path / "tasks"
    written = export_tasks(EvalConfig(tasks=("demo",), demo_items=6, max_gen_toks=17), ["demo"], tmp_path, out, seed=3)
    assert [p.name for p in written] == ["demo_math.yaml", "demo_medical.yaml", "demo_reasoning.yaml",
                                         "demo_gsm8k.yaml"]
    for p in written:
        doc = yaml.safe_load(p.read_text())
        assert doc["task"] == p.stem and "include" not in doc and "tag" not in doc
        for f in doc["dataset_kwargs"]["data_files"].values():
            assert Path(f).is_absolute() and Path(f).is_file() and Path(f).parent == out.resolve() / "data"
            assert len(Path(f).read_text().splitlines()) == 6
    gsm = yaml.safe_load((out / "demo_gsm8k.yaml").read_text())  # gsm8k.yaml merged in, the demo's overrides on top
    assert gsm["num_fewshot"] == 0 and gsm["filter_list"][1]["name"] == "flexible-extract"
    assert gsm["generation_kwargs"]["max_gen_toks"] == 17  # the profile's eval.max_gen_toks
    # the harness's own index finds them (what --include_path reads)
    from lm_eval.tasks import TaskManager

    assert set(TaskManager(include_path=str(out), include_defaults=False).all_tasks) == {p.stem for p in written}


@pytest.mark.slow
def test_lm_eval_cli_runs_the_exported_tasks_on_the_tiny_base(tmp_path):
    from brainstacks_core.evaluation.run import evaluate_profile
    from brainstacks_core.profile import load_profile
    from brainstacks_core.training.run import ensure_base

    cfg = _profile(tmp_path)
    out = tmp_path / "exported"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cli = subprocess.run([sys.executable, "-m", "flows.cli", "eval", "export-tasks", str(out), "--config", str(cfg)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert f"--include_path {out.resolve()}" in cli.stdout
    profile = load_profile(cfg)
    base = ensure_base(profile.training_setup, None, None).path  # the demo's tiny base: an HF folder
    assert (Path(base) / "config.json").is_file() and (Path(base) / "tokenizer.json").is_file()
    results = tmp_path / "lm_eval_out"
    run = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={base}",
                          "--include_path", str(out), "--tasks", "demo_math,demo_gsm8k", "--limit", "5",
                          "--device", "cpu", "--output_path", str(results)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    files = sorted(results.rglob("results_*.json"))
    assert files, run.stdout[-2000:]
    doc = json.loads(files[-1].read_text())
    res = doc["results"]
    assert set(res) == {"demo_math", "demo_gsm8k"}
    assert doc["n-samples"]["demo_math"]["effective"] == 5 and doc["n-samples"]["demo_gsm8k"]["effective"] == 5
    assert 0.0 <= res["demo_math"]["acc,none"] <= 1.0 and 0.0 <= res["demo_gsm8k"]["exact_match,flexible-extract"] <= 1.0
    # the same numbers brainstacks' own evaluation gets (base mode: the base alone) on the same 5 items
    ours = evaluate_profile(profile.eval_setup, modes=["base"], tasks=["demo_math", "demo_gsm8k"], limit=5,
                            progress=False)
    for task, key in (("demo_math", "acc,none"), ("demo_math", "acc_norm,none"),
                      ("demo_gsm8k", "exact_match,flexible-extract"), ("demo_gsm8k", "exact_match,strict-match")):
        mine = ours["summary"][task]["base"]["scores"][key]["value"]
        assert mine == pytest.approx(res[task][key]), (task, key, mine, res[task])


def test_export_tasks_is_an_action_of_eval_and_eval_alone_still_scores():
    from flows.cli import build_parser

    parser = build_parser()
    for argv in (["eval", "export-tasks", "/tmp/d", "--config", "p.yaml", "--tasks", "demo"],
                 ["eval", "--config", "p.yaml", "--tasks", "demo", "export-tasks", "/tmp/d"]):
        args = parser.parse_args(argv)
        assert (args.eval_command, args.dir, args.config, args.tasks) == ("export-tasks", "/tmp/d", "p.yaml", "demo")
    args = parser.parse_args(["eval", "--config", "p.yaml", "--mode", "base"])
    assert args.eval_command is None and args.mode == "base"
