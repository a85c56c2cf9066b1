"""Prefect tasks of the routing stage: thin wrappers over ``brainstacks_core.routing.run``.

One task runs oracle -> router -> routed evaluation, because all three read the
same loaded model (base plus every frozen stack): loading it once per stage would
triple the load time at Gemma-3-12B scale (~8 GB of 4-bit weights). Each stage is
cached by its inputs inside the core (oracle rows in the catalog, the router folder
by key), so a retry redoes only what did not finish. Progress (oracle greedy
steps, router epochs) goes to one progress artifact.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import Profile
from tasks.artifacts import report_artifact
from tasks.progress import artifact_key, progress_artifact
from tasks.run_context import run_ids


def routing_progress(key: str, title: str, epochs: int, min_interval_s: float = 1.0):
    """A ``progress(info)`` callable for the routing stage: oracle steps fill 0-50 %, router epochs 50-100 %."""

    def render(info: dict) -> tuple[float, str, bool]:
        if info.get("stage") == "oracle":
            pct = 50.0 * min(1.0, int(info.get("step", 0)) / max(1, int(info.get("max_steps", 1))))
            return pct, (f"{title}: oracle greedy step {info.get('step')}/{info.get('max_steps')}, "
                         f"{info.get('active')} prompts still improving, {info.get('computed')} losses computed"), False
        epoch = int(info.get("epoch", 0))
        desc = f"{title}: router epoch {epoch}/{epochs}" + "".join(
            f", {k} {v:.4f}" for k, v in info.items() if isinstance(v, float))
        return 50.0 + 50.0 * min(1.0, epoch / max(1, epochs)), desc, epoch >= epochs

    return progress_artifact(key, title, render, min_interval_s)


@task(name="route-run", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def route_task(profile: Profile, run_name: str = "main") -> dict:
    """Oracle discovery, meta-router training and routed evaluation of one trained run (the flow's profile)."""
    from brainstacks_core.routing.run import route_profile

    log = get_run_logger()
    hook = routing_progress(artifact_key("routing", profile.name, run_name), f"{profile.name}/{run_name}",
                            profile.router.epochs)
    try:
        out = route_profile(profile.routing_setup, run_name, Catalog.for_context(profile.context), run_ids(),
                            progress_cb=hook)
    except BaseException:
        hook.finish("failed (see the flow run's logs)", progress=0.0)
        raise
    o = out["summary"]["oracle"]
    hook.finish(f"done: oracle {o['computed']} losses computed, {o['reused']} reused; "
                f"router {out['summary']['router_version']}")
    log.info("oracle %s: %d losses computed, %d reused, %d forwards; router %s", o["version"], o["computed"],
             o["reused"], o["forwards"], out["summary"]["router_version"])
    report_artifact(profile.name, out["report"])  # the routing section is in the report now
    return {k: out[k] for k in ("markdown", "plots", "summary", "version", "report")}


@task(name="oracle-shard", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def oracle_shard_task(profile: Profile, run_name: str, shard: int, n_shards: int) -> dict:
    """One oracle shard of a trained run (its prompts' losses into the shared catalog); see
    ``brainstacks_core.routing.oracle_shards``. Retried on failure; Dask re-runs it on another worker
    when its worker dies, and the retry reuses every loss the dead one flushed."""
    from brainstacks_core.routing.oracle_shards import run_oracle_shard

    out = run_oracle_shard(profile.routing_setup, run_name, shard, n_shards, Catalog.for_context(profile.context))
    get_run_logger().info("oracle shard %d/%d: %d pairs + %d test rows, %d computed, %d reused, %d forwards, "
                          "base load %.1f s of %.1f s", shard, n_shards, out["pairs"], out["test_rows"],
                          out["computed"], out["reused"], out["forwards"], out["load_seconds"], out["seconds"])
    return out
