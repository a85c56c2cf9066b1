"""``oracle-fanout`` flow: the oracle of one trained run as shards on a Dask cluster (prefect-dask).

Why Dask rather than flow runs on the ``gpu`` pool, and which cluster: ``flows/fanout.py``
(shared with ``evaluate-fanout``).

Settings (``router:``): ``oracle_shards`` (1: no fan-out; 0: one shard per worker of the
cluster), ``dask_address`` or ``$BRAINSTACKS_DASK_ADDRESS`` (none: a local cluster of
``oracle_shards`` worker processes, one thread each, so the cores are not oversubscribed),
``oracle_flush_forwards`` (K). Across hosts the catalog must be PostgreSQL
(``lineage.catalog_url``) and the store shared; the parent refuses a cluster on another host
with the DuckDB file.
"""

from __future__ import annotations

from prefect import flow

from brainstacks_core.profile import Profile, load_profile
from flows.fanout import dask_address, fanout_runner, require_shared_catalog, shard_count
from flows.params import ProfilePath, RunName
from tasks.routing import oracle_shard_task


@flow(name="oracle-fanout")
def oracle_fanout(config_path: ProfilePath = "configs/demo.yaml", run_name: RunName = "main", n_shards: int = 2,
                  artifact_root: str | None = None) -> list[dict]:
    """Run the ``n_shards`` oracle shards of ``run_name`` in parallel and wait for all of them.

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in).
        run_name: Trained run under <store>/training whose oracle is computed (default: main).
        n_shards: How many shards the prompts are split into.
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
    """
    profile = load_profile(config_path, artifact_root)
    futures = [oracle_shard_task.submit(profile, run_name, i, n_shards) for i in range(n_shards)]
    return [f.result() for f in futures]


def run_oracle_fanout(profile: Profile, run_name: str = "main", config_path: str | None = None,
                      artifact_root: str | None = None) -> list[dict] | None:
    """Fan the oracle of ``run_name`` out when the profile asks for it and the routing is not current.

    Returns:
        The shards' counts, or None when there was nothing to fan out (``oracle_shards: 1``, or the
        routing of this run is already current: the routing task then loads no model at all).
    """
    from brainstacks_core.routing.run_inputs import routing_is_current

    cfg = profile.router
    if cfg.oracle_shards == 1 or not cfg.enabled or routing_is_current(profile.routing_setup, run_name):
        return None
    address = dask_address(cfg.dask_address)
    require_shared_catalog(profile, address, "router.oracle_shards")
    n = shard_count(cfg.oracle_shards, address)
    return oracle_fanout.with_options(task_runner=fanout_runner(address, n))(
        config_path=config_path or str(profile.context.source_path), run_name=run_name, n_shards=n,
        artifact_root=artifact_root)
