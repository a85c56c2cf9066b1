"""``oracle-fanout`` flow: the oracle of one trained run as shards on a Dask cluster (prefect-dask).

Why Dask (prefect-dask's ``DaskTaskRunner``) rather than one flow run per shard through
``run_deployment`` on the ``gpu`` pool: a Dask scheduler already does what a shard needs
from its runner. It places each shard on a free worker (start one worker per GPU:
``dask worker tcp://scheduler:8786 --nworkers 1 --nthreads 1`` on each GPU host, with the
venv and the store's credentials), and when a worker dies (SIGKILL, OOM, a lost host) it
runs that worker's shard again on another one by itself. With flow runs, a killed worker
leaves its flow run "Running" until a heartbeat automation marks it crashed and something
resubmits it. The shard tasks still show up in the Prefect UI as task runs of this flow.

Settings (``router:``): ``oracle_shards`` (1: no fan-out; 0: one shard per worker of the
cluster), ``dask_address`` or ``$BRAINSTACKS_DASK_ADDRESS`` (none: a local cluster of
``oracle_shards`` worker processes, one thread each, so the cores are not oversubscribed),
``oracle_flush_forwards`` (K). Across hosts the catalog must be PostgreSQL
(``lineage.catalog_url``) and the store shared; the parent refuses a cluster on another host
with the DuckDB file.
"""

from __future__ import annotations

import os

from prefect import flow

from brainstacks_core.profile import Profile, load_profile
from flows.params import ProfilePath, RunName
from brainstacks_core.routing.config import RouterConfig
from tasks.routing import oracle_shard_task

ADDRESS_ENV = "BRAINSTACKS_DASK_ADDRESS"


def _loopback(address: str) -> bool:
    """Whether a scheduler address is on this machine (its workers can share the DuckDB file)."""
    from urllib.parse import urlsplit

    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def dask_address(cfg: RouterConfig) -> str | None:
    """The Dask scheduler the shards run on: ``$BRAINSTACKS_DASK_ADDRESS``, else ``router.dask_address``."""
    return os.environ.get(ADDRESS_ENV) or cfg.dask_address


def shard_count(cfg: RouterConfig) -> int:
    """``router.oracle_shards``, or for 0 the number of workers the cluster has now (local: the cores)."""
    if cfg.oracle_shards:
        return cfg.oracle_shards
    address = dask_address(cfg)
    if not address:
        return max(1, os.cpu_count() or 1)
    from distributed import Client

    with Client(address, timeout=30) as client:
        return max(1, len(client.scheduler_info()["workers"]))


def fanout_runner(cfg: RouterConfig, n_shards: int):
    """A ``DaskTaskRunner`` on the configured scheduler, or on a local cluster of ``n_shards`` processes."""
    from prefect_dask import DaskTaskRunner

    address = dask_address(cfg)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_shards, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


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
    from brainstacks_core.lineage.backends import URL_SETTING
    from brainstacks_core.routing.run import routing_is_current

    cfg = profile.router
    if cfg.oracle_shards == 1 or not cfg.enabled or routing_is_current(profile.routing_setup, run_name):
        return None
    address = dask_address(cfg)
    if address and not _loopback(address) and profile.context.catalog_url is None:
        raise ValueError(f"router.oracle_shards fans the oracle out to the Dask cluster at {dask_address(cfg)}, "
                         f"but the catalog is the local DuckDB file {profile.context.catalog_path}: workers on "
                         f"other hosts cannot write it. Set {URL_SETTING} to a PostgreSQL catalog.")
    n = shard_count(cfg)
    return oracle_fanout.with_options(task_runner=fanout_runner(cfg, n))(
        config_path=config_path or str(profile.context.source_path), run_name=run_name, n_shards=n,
        artifact_root=artifact_root)
