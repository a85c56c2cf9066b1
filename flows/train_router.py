"""``train-router`` flow: oracle discovery -> meta-router -> routed evaluation of a trained run.

Runs after continual training (``brainstacks run`` and ``make demo`` call it) or on
its own: ``brainstacks train-router --config configs/demo.yaml``. Cached by
inputs: a re-run does 0 oracle forward passes and trains no router; after one
domain retrains, only the oracle rows of the combinations containing it are
computed.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from brainstacks_core.lineage.store_sync import check_store  # noqa: E402
from brainstacks_core.profile import load_profile  # noqa: E402
from flows.gpu import gpu_slot  # noqa: E402
from flows.oracle_fanout import run_oracle_fanout  # noqa: E402
from flows.params import ProfilePath, RunName  # noqa: E402
from tasks.artifacts import markdown_artifact  # noqa: E402
from tasks.lineage import routing_inputs, lineage_hooks  # noqa: E402
from tasks.progress import artifact_key  # noqa: E402
from tasks.routing import route_task  # noqa: E402


@flow(name="train-router", **lineage_hooks(routing_inputs))
def train_router(config_path: ProfilePath = "configs/demo.yaml", run_name: RunName = "main",
                 artifact_root: str | None = None) -> dict:
    """Oracle targets on the router split, the meta-router, and routed losses on the test split.

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in).
        run_name: Trained run under <store>/training to route (default: main).
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
    """
    profile = load_profile(config_path, artifact_root)
    check_store(profile.context)  # an unreachable object store: one clear error first
    # router.oracle_shards != 1: shards on Dask workers fill the oracle cache first (flows/oracle_fanout.py)
    run_oracle_fanout(profile, run_name, config_path, artifact_root)
    with gpu_slot():  # the oracle and features load the base: one run per GPU (re-entrant inside a flow holding it)
        out = route_task(profile, run_name)
    markdown_artifact(key=artifact_key("routing-report", profile.name, run_name), markdown=out["markdown"],
                      plots=out["plots"], description="Oracle combinations, router vs baselines, routed losses, answers")
    return out


def cli_train_router(args: argparse.Namespace) -> int:
    """``brainstacks train-router --config PATH [--run main]``: print the routing report."""
    if not load_profile(args.config, args.artifact_root).router.enabled:
        print("router.enabled is false in this profile: nothing to do")
        return 0
    out = train_router(config_path=args.config, run_name=args.run, artifact_root=args.artifact_root)
    print(out["markdown"])
    return 0
