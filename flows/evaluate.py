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
from typing import Annotated

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402
from pydantic import Field  # noqa: E402

from brainstacks_core.evaluation.config import MODES  # noqa: E402
from brainstacks_core.evaluation.record import counts_line  # noqa: E402
from brainstacks_core.evaluation.suite import GROUPS, available, check_request  # noqa: E402
from brainstacks_core.evaluation.task_data import BenchmarkFileError  # noqa: E402
from brainstacks_core.lineage.store_sync import check_store  # noqa: E402
from brainstacks_core.profile import load_profile  # noqa: E402
from flows.gpu import gpu_slot  # noqa: E402
from flows.params import ProfilePath, RunName  # noqa: E402
from tasks.evaluation import evaluate_task  # noqa: E402
from tasks.lineage import eval_inputs, lineage_hooks  # noqa: E402

# Choices the Prefect form offers (the core names an unknown one: check_request).
EvalMode = Annotated[str, Field(json_schema_extra={"enum": list(MODES)})]
EvalTask = Annotated[str, Field(json_schema_extra={"enum": [*available(), *GROUPS]})]


@flow(name="evaluate", **lineage_hooks(eval_inputs))
def evaluate(config_path: ProfilePath = "configs/demo.yaml", run_name: RunName = "main",
             modes: list[EvalMode] | None = None, tasks: list[EvalTask] | None = None,
             limit: Annotated[int, Field(ge=1)] | None = None, artifact_root: str | None = None) -> dict:
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
    """
    profile = load_profile(config_path, artifact_root)
    check_store(profile.context)  # an unreachable object store: one clear error first
    check_request(modes or profile.eval.modes, tasks or profile.eval.tasks)  # fail before the task starts
    with gpu_slot():  # lm-eval runs the base on the GPU: one run per GPU (re-entrant inside a flow holding it)
        return evaluate_task(profile, run_name, modes or None, tasks or None, limit)


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def cli_eval(args: argparse.Namespace) -> int:
    """``brainstacks eval --config PATH [--run main] [--mode ...] [--tasks ...] [--limit N]``."""
    profile = load_profile(args.config, args.artifact_root)
    modes, tasks = _names(args.mode), _names(args.tasks)
    try:
        check_request(modes or profile.eval.modes, tasks or profile.eval.tasks)
    except ValueError as exc:
        print(f"brainstacks eval: {exc}", file=sys.stderr)
        return 2
    if not (tasks or profile.eval.tasks):
        print(f"{args.config}: eval.tasks is empty and --tasks names none: nothing to evaluate")
        return 0
    try:
        out = evaluate(config_path=args.config, run_name=args.run, modes=modes or None, tasks=tasks or None,
                       limit=args.limit, artifact_root=args.artifact_root)
    except (FileNotFoundError, BenchmarkFileError) as exc:  # an untrained run, a missing or broken benchmark
        # file: the message names it and says what to do
        print(f"brainstacks eval: {exc}", file=sys.stderr)
        return 1
    print(out["markdown"])
    print(f"\n{counts_line(out['per_mode'])}\nresults: {out['results']}\nplot: {out['plot']}")
    return 0
