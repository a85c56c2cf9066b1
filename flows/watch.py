"""``watch-sources`` flow: check a profile's sources cheaply and prepare only the changed domains.

Scheduled per profile (prefect.yaml: ``watch-demo``, ``watch-shared``, ...; the
interval is the profile's ``orchestration.watch_interval_seconds``). Nothing changed:
the run ends after one stat per local file and one hub request per tracked branch.
Something changed: the ``prepare-data`` flow runs for those domains and the domains
their rows move to (keyword moves still see every domain) and emits the ONE ``brainstacks.data.changed`` event that
the retraining deployment's trigger listens to. The watch state is committed only
after the preparation succeeded, so a failed one is retried at the next check.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from brainstacks_core.data.watch import check_sources, commit_state  # noqa: E402
from brainstacks_core.profile import Profile, load_profile  # noqa: E402
from flows.params import ProfilePath  # noqa: E402
from flows.prepare_data import prepare_data  # noqa: E402
from tasks.lineage import data_inputs, lineage_hooks  # noqa: E402


@task(name="check-sources", cache_policy=NO_CACHE)
def check_sources_task(profile: Profile):
    """Which domains have changed sources (nothing is written yet)."""
    result = check_sources(profile.context, profile.data)
    logger = get_run_logger()
    for d in result.changed:
        logger.info("%s changed: %s", d, "; ".join(result.reasons[d]))
    if not result.changed:
        logger.info("no source changed")
    return result


@flow(name="watch-sources", **lineage_hooks(data_inputs))
def watch_sources(config_path: ProfilePath = "configs/demo.yaml", artifact_root: str | None = None,
                  dry_run: bool = False) -> dict:
    """Check every source of the profile; prepare only the domains whose sources changed.

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in,
            BRAINSTACKS_HOME).
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
        dry_run: Only report what changed; prepare nothing and keep the watch state as it was.

    Returns:
        ``{"changed": [...], "reasons": {...}, "prepared": {domain: summary}}``.
    """
    result = check_sources_task(load_profile(config_path, artifact_root))
    prepared: dict = {}
    if result.changed and not dry_run:
        prepared = prepare_data(config_path=config_path, artifact_root=artifact_root, domains=result.changed)
    if not dry_run:
        commit_state(result)
    return {"changed": result.changed, "reasons": result.reasons,
            "prepared": {d: {k: r.get(k) for k in ("version", "new_version", "train")} for d, r in prepared.items()}}


def cli_watch(args: argparse.Namespace) -> int:
    """``brainstacks watch --config PATH [--dry-run]``: one check (the scheduled deployment runs the same)."""
    out = watch_sources(config_path=args.config, artifact_root=args.artifact_root, dry_run=args.dry_run)
    if not out["changed"]:
        print("no source changed")
    for d in out["changed"]:
        new = out["prepared"].get(d, {})
        print(f"{d}: {'; '.join(out['reasons'][d])}"
              + (f" -> version {new.get('version')} ({'new' if new.get('new_version') else 'same'})" if new else ""))
    return 0
