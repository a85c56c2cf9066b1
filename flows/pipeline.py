"""The whole pipeline on a profile: ``brainstacks run --config configs/demo.yaml`` (``make demo``).

prepare data -> base model -> continual training (with null space; and, when the
profile asks for the ablation, without) -> Experiment 1 -> report (plots,
markdown artifact, lineage) -> routing (oracle, meta-router, routed losses) -> benchmark evaluation
(lm-evaluation-harness, when ``eval.enabled`` and ``eval.tasks``) -> the paper's tables and figures (last, so
its Table 4 has the evaluation). Every step is resumable and cached by version.
Training, routing, evaluation and the paper tables each add their section to ``<store>/reports/report.md``,
which is rebuilt (with its ``report-<profile>`` markdown artifact) after each; the flow returns the final one.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from brainstacks_core.evaluation.suite import check_request  # noqa: E402
from brainstacks_core.lineage.store_sync import check_store  # noqa: E402
from brainstacks_core.profile import load_profile  # noqa: E402
from flows.continual_training import continual_training  # noqa: E402
from flows.evaluate import evaluate  # noqa: E402
from flows.gpu import gpu_slot  # noqa: E402
from flows.params import ProfilePath  # noqa: E402
from flows.prepare_data import format_table, prepare_data  # noqa: E402
from flows.train_router import train_router  # noqa: E402
from tasks.lineage import data_inputs, lineage_hooks  # noqa: E402
from tasks.training import experiment1_task, paper_report_task, report_task  # noqa: E402


@flow(name="brainstacks-pipeline", **lineage_hooks(data_inputs))
def brainstacks_pipeline(config_path: ProfilePath = "configs/demo.yaml", artifact_root: str | None = None) -> dict:
    """Run every stage of the profile and return the report (paths, markdown).

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in,
            BRAINSTACKS_HOME).
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
    """
    profile = load_profile(config_path, artifact_root)
    check_store(profile.context)  # an unreachable object store: one clear error first
    if profile.eval.enabled:  # an unknown eval task fails now, not after training
        check_request(profile.eval.modes, profile.eval.tasks)
    # no data-changed event: this flow trains next (the event would start a competing retraining)
    counts = prepare_data(config_path=config_path, artifact_root=artifact_root, announce=False)
    runs = ["main"]
    continual_training(config_path=config_path, run_name="main", artifact_root=artifact_root)

    cfg = profile.training
    if cfg.null_space and cfg.ablation:
        continual_training(config_path=config_path, run_name="no-null-space", null_space=False,
                           artifact_root=artifact_root)
        runs.append("no-null-space")
    if profile.experiment1 is not None and profile.experiment1.enabled:
        with gpu_slot():  # trains two arms on the base: one run per GPU
            experiment1_task(profile)
    report = report_task(profile, runs)  # each stage adds its section and rebuilds report.md and its artifact
    if profile.router.enabled:
        report = train_router(config_path=config_path, run_name="main", artifact_root=artifact_root)["report"]
    if profile.eval.enabled and profile.eval.tasks:
        report = evaluate(config_path=config_path, run_name="main", artifact_root=artifact_root).get("report", report)
    with gpu_slot():  # after the evaluation (the paper's Table 4); measures the subspace figures on the base
        report = paper_report_task(profile, runs)
    report = dict(report)
    report["data_counts"] = counts
    return report


def cli_run(args: argparse.Namespace) -> int:
    """``brainstacks run --config PATH``: the whole pipeline, then print the report."""
    report = brainstacks_pipeline(config_path=args.config, artifact_root=args.artifact_root)
    print(format_table(report["data_counts"]))
    print()
    print(report["markdown"])
    print(f"\nplots: {', '.join(report['plots'])}")
    return 0
