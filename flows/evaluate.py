"""``evaluate`` flow: benchmark evaluation of a trained run on lm-evaluation-harness.

Runs at the end of ``brainstacks run`` (after the router trains), on its own
(``brainstacks eval --config configs/demo.yaml``), or from its deployments
(``evaluate-<profile>``, started when the profile's routing completes). Every
request is cached in the catalog by the effective model it ran on: a re-run scores
nothing, a retrained stack re-scores only the requests whose model contains it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from brainstacks_core.evaluation.protocol import check_protocols, protocol_config  # noqa: E402
from brainstacks_core.evaluation.record import counts_line  # noqa: E402
from brainstacks_core.evaluation.suite import check_request  # noqa: E402
from brainstacks_core.evaluation.task_data import BenchmarkFileError  # noqa: E402
from brainstacks_core.lineage.store_sync import check_store  # noqa: E402
from brainstacks_core.profile import load_profile  # noqa: E402
from flows.eval_fanout import run_eval_fanout  # noqa: E402
from flows.eval_params import EvalMode, EvalProtocol, EvalTask, ItemLimit  # noqa: E402
from flows.gpu import gpu_slot  # noqa: E402
from flows.params import ProfilePath, RunName  # noqa: E402
from tasks.evaluation import evaluate_task  # noqa: E402
from tasks.lineage import eval_inputs, lineage_hooks  # noqa: E402


def check_protocol_request(profile, protocols: list[str] | None, modes: list[str] | None,
                           tasks: list[str] | None) -> list[str]:
    """The protocols to run (default ``eval.protocols``), each one's modes and tasks checked; raises
    ``ValueError`` naming an unknown protocol, mode or task."""
    protocols = list(protocols or profile.eval.protocols)
    check_protocols(protocols)
    for p in protocols:
        scored = protocol_config(profile.eval, p)
        check_request(modes or scored.modes, tasks or scored.tasks)
    return protocols


@flow(name="evaluate", **lineage_hooks(eval_inputs))
def evaluate(config_path: ProfilePath = "configs/demo.yaml", run_name: RunName = "main",
             modes: list[EvalMode] | None = None, tasks: list[EvalTask] | None = None,
             limit: ItemLimit | None = None, artifact_root: str | None = None,
             protocols: list[EvalProtocol] | None = None) -> dict:
    """Score a trained run on lm-evaluation-harness in base, ungated and routed modes.

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in).
        run_name: Trained run under <store>/training to evaluate (default: main); routed mode uses its
            trained meta-router (skipped, with the reason, when there is none).
        modes: Modes to score: base (no stacks), ungated (every stack), routed (the meta-router decides per
            request). Empty: the profile's eval.modes.
        tasks: Benchmarks (harness task names, or the groups mmlu_medical and demo). Empty: the profile's
            eval.tasks.
        limit: Items per task (the first N). Empty: the profile's eval.limit and eval.task_limits.
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
        protocols: Evaluation protocols, each with its own results and table: lm-eval (the harness's scoring)
            and paper (the paper's: mean per-token log-prob, zero-shot Alpaca GSM8K, eval.paper's n and max
            length). Empty: the profile's eval.protocols.
    """
    profile = load_profile(config_path, artifact_root)
    check_store(profile.context)  # an unreachable object store: one clear error first
    protocols = check_protocol_request(profile, protocols, modes, tasks)  # fail before the task starts
    # eval.shards != 1: shards on Dask workers fill the score cache first (flows/eval_fanout.py)
    run_eval_fanout(profile, run_name, config_path, artifact_root, modes or None, tasks or None, limit, protocols)
    with gpu_slot():  # lm-eval runs the base on the GPU: one run per GPU (re-entrant inside a flow holding it)
        return evaluate_task(profile, run_name, modes or None, tasks or None, limit, protocols)


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def cli_export_tasks(args: argparse.Namespace) -> int:
    """``brainstacks eval export-tasks DIR [--config PATH] [--tasks ...]``: task YAMLs for lm-eval's own CLI."""
    from brainstacks_core.evaluation.export import export_tasks

    profile = load_profile(args.config, args.artifact_root)
    cfg, ctx = profile.eval, profile.context
    tasks = _names(args.tasks) or list(cfg.tasks)
    if not tasks:
        print(f"{args.config}: eval.tasks is empty and --tasks names none: nothing to export")
        return 0
    data_dir = cfg.data_dir if cfg.data_dir.is_absolute() else (ctx.repo_root / cfg.data_dir).resolve()
    try:
        written = export_tasks(cfg, tasks, data_dir, Path(args.dir), seed=ctx.seed)
    except (ValueError, FileNotFoundError) as exc:  # unknown task, missing or broken benchmark file: named
        print(f"brainstacks eval export-tasks: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    names = ",".join(p.stem for p in written)
    print(f"\nlm_eval --model hf --model_args pretrained=<model folder> --include_path "
          f"{Path(args.dir).resolve()} --tasks {names} --limit 5")
    return 0


def cli_eval(args: argparse.Namespace) -> int:
    """``brainstacks eval --config PATH [--run main] [--mode ...] [--tasks ...] [--limit N] [--protocol ...]``,
    or ``brainstacks eval export-tasks DIR`` (:func:`cli_export_tasks`)."""
    if getattr(args, "eval_command", None) == "export-tasks":
        return cli_export_tasks(args)
    profile = load_profile(args.config, args.artifact_root)
    modes, tasks, protocols = _names(args.mode), _names(args.tasks), _names(getattr(args, "protocol", None))
    try:
        protocols = check_protocol_request(profile, protocols, modes, tasks)
    except ValueError as exc:
        print(f"brainstacks eval: {exc}", file=sys.stderr)
        return 2
    if not (tasks or any(protocol_config(profile.eval, p).tasks for p in protocols)):
        print(f"{args.config}: eval.tasks is empty and --tasks names none: nothing to evaluate")
        return 0
    try:
        out = evaluate(config_path=args.config, run_name=args.run, modes=modes or None, tasks=tasks or None,
                       limit=args.limit, artifact_root=args.artifact_root, protocols=protocols)
    except (FileNotFoundError, BenchmarkFileError) as exc:  # an untrained run, a missing or broken benchmark
        # file: the message names it and says what to do
        print(f"brainstacks eval: {exc}", file=sys.stderr)
        return 1
    print(out["markdown"])
    for p, o in (out.get("protocols") or {out.get("protocol"): out}).items():
        print(f"\n{p} protocol: {counts_line(o['per_mode'])}\nresults: {o['results']}\nplot: {o['plot']}")
    return 0
