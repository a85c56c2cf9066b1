"""Training flows: ``train_domain`` (one domain's rounds) and ``continual_training`` (all, in order).

Both resume from the run's manifest: a crashed or cancelled run started again
continues at the round where it stopped. ``train_domain`` is what the ``gpu``
work pool runs per domain (prefect.yaml); ``continual_training`` sequences it.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from brainstacks_core.lineage.store_sync import check_store  # noqa: E402
from brainstacks_core.profile import load_profile  # noqa: E402
from flows.evaluate import evaluate  # noqa: E402
from flows.gpu import gpu_slot  # noqa: E402
from flows.params import DomainName, ProfilePath, RunName  # noqa: E402
from tasks.artifacts import markdown_artifact  # noqa: E402
from tasks.lineage import training_inputs, lineage_hooks  # noqa: E402
from flows.train_router import train_router  # noqa: E402
from tasks.training import build_base_task, resolve_data_task, run_summary_task, train_domain_task  # noqa: E402


@flow(name="train-domain", **lineage_hooks(training_inputs))
def train_domain(config_path: ProfilePath, domain: DomainName, run_name: RunName = "main",
                 null_space: bool | None = None, data_versions: dict[str, str] | None = None,
                 artifact_root: str | None = None) -> dict:
    """Train one domain's boosting rounds on top of the run's frozen stacks.

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in,
            BRAINSTACKS_HOME).
        domain: The domain to train (a domain of the profile's curriculum; earlier domains are
            resumed or trained first if missing).
        run_name: Run folder under <store>/training (main; no-null-space is the ablation).
        null_space: Null-space projection on (true) or off (false, the ablation); empty: the profile's
            training.null_space.
        data_versions: Dataset version per domain (`brainstacks audit --list` shows them); empty: the
            latest prepared version of each, pinned at the start of the flow.
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
    """
    profile = load_profile(config_path, artifact_root)  # once: every task of the run reads this one
    check_store(profile.context)  # an unreachable object store: one clear error first
    versions = {**resolve_data_task(profile), **(data_versions or {})}
    with gpu_slot():  # one run per GPU (global concurrency limit `gpu`, when it exists and CUDA is here)
        build_base_task(profile, versions)
        return train_domain_task(profile, domain, run_name, null_space, versions)


@flow(name="continual-training", **lineage_hooks(training_inputs))
def continual_training(config_path: ProfilePath = "configs/demo.yaml", run_name: RunName = "main",
                       null_space: bool | None = None, artifact_root: str | None = None,
                       downstream: bool = False) -> list[dict]:
    """Every domain of the curriculum in order, then a markdown artifact of the rounds and forgetting matrix.

    Finished rounds on unchanged inputs are never retrained: a change in domain k retrains k and the
    domains after it. One writer per run folder (a second request waits or is skipped).

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in,
            BRAINSTACKS_HOME).
        run_name: Run folder under <store>/training (main; no-null-space is the ablation).
        null_space: Null-space projection on (true) or off (false, the ablation); empty: the profile's
            training.null_space.
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
        downstream: Then bring what depends on the stacks up to date: the router (train-router: oracle rows
            only for the combinations a retrained stack is in) and the benchmark evaluation (evaluate: only
            the requests whose model contains a retrained stack), as subflows. The retrain-on-data-change
            deployments set it, so `brainstacks generate` works again after an automatic retraining.
    """

    profile = load_profile(config_path, artifact_root)  # once: every task of the run reads this one
    check_store(profile.context)  # an unreachable object store: one clear error first
    versions = resolve_data_task(profile)  # pinned once: every domain trains on the same data
    with gpu_slot():  # one run per GPU (global concurrency limit `gpu`, when it exists and CUDA is here)
        build_base_task(profile, versions)
        results = [train_domain_task(profile, d, run_name, null_space, versions) for d in profile.curriculum]
    summary = run_summary_task(profile, run_name)
    markdown_artifact(key=f"training-{profile.name}-{run_name}".replace("_", "-").lower(),
                      markdown=summary["markdown"], plots=summary["plots"],
                      description="per-round validation losses and the forgetting matrix")
    if downstream and run_name == "main":
        if profile.router.enabled:
            train_router(config_path=config_path, run_name=run_name, artifact_root=artifact_root)
            if profile.eval.enabled and profile.eval.tasks:
                evaluate(config_path=config_path, run_name=run_name, artifact_root=artifact_root)
    return results


def cli_train(args: argparse.Namespace) -> int:
    """``brainstacks train --config PATH [--domain D]``."""
    if args.domain:
        r = train_domain(config_path=args.config, domain=args.domain, artifact_root=args.artifact_root)
        results = [r]
    else:
        results = continual_training(config_path=args.config, artifact_root=args.artifact_root)
    for r in results:
        for x in r["rounds"]:
            print(f"{r['domain']:>10} r{x['round']}  {x['status']:>9}  val loss {x['loss_before']:.4f} -> "
                  f"{x['loss_after']:.4f}")
    return 0
