"""The Dask runner the fan-out flows share (``oracle-fanout``, ``evaluate-fanout``): which cluster, how many shards.

Why Dask (prefect-dask's ``DaskTaskRunner``) rather than one flow run per shard through
``run_deployment`` on the ``gpu`` pool: a Dask scheduler already does what a shard needs
from its runner. It places each shard on a free worker (start one worker per GPU:
``dask worker tcp://scheduler:8786 --nworkers 1 --nthreads 1`` on each GPU host, with the
venv and the store's credentials), and when a worker dies (SIGKILL, OOM, a lost host) it
runs that worker's shard again on another one by itself. With flow runs, a killed worker
leaves its flow run "Running" until a heartbeat automation marks it crashed and something
resubmits it. The shard tasks still show up in the Prefect UI as task runs of the fan-out flow.

The cluster is ``$BRAINSTACKS_DASK_ADDRESS``, else ``router.dask_address`` (one setting for
both fan-outs); none: a local cluster of one worker process per shard, one thread each, so
the cores are not oversubscribed. Across hosts the catalog must be PostgreSQL
(``lineage.catalog_url``) and the store shared: :func:`require_shared_catalog` refuses a
cluster on another host with the DuckDB file.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

ADDRESS_ENV = "BRAINSTACKS_DASK_ADDRESS"


def loopback(address: str) -> bool:
    """Whether a scheduler address is on this machine (its workers can share the DuckDB file)."""
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def dask_address(configured: str | None) -> str | None:
    """The Dask scheduler the shards run on: ``$BRAINSTACKS_DASK_ADDRESS``, else ``configured``
    (``router.dask_address``); None: a local cluster."""
    return os.environ.get(ADDRESS_ENV) or configured


def shard_count(shards: int, address: str | None) -> int:
    """``shards`` (a profile's ``oracle_shards`` / ``eval.shards``), or for 0 the number of workers the
    cluster at ``address`` has now (no address: the cores of this machine)."""
    if shards:
        return shards
    if not address:
        return max(1, os.cpu_count() or 1)
    from distributed import Client

    with Client(address, timeout=30) as client:
        return max(1, len(client.scheduler_info()["workers"]))


def fanout_runner(address: str | None, n_shards: int):
    """A ``DaskTaskRunner`` on the scheduler at ``address``, or on a local cluster of ``n_shards`` processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_shards, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def require_shared_catalog(profile, address: str | None, setting: str) -> None:
    """Refuse a cluster on another host while the catalog is the local DuckDB file.

    Raises:
        ValueError: names ``setting`` (what asked for the fan-out), the cluster, the file, and the fix.
    """
    from brainstacks_core.lineage.backends import URL_SETTING

    if address and not loopback(address) and profile.context.catalog_url is None:
        raise ValueError(f"{setting} fans the work out to the Dask cluster at {address}, but the catalog is the "
                         f"local DuckDB file {profile.context.catalog_path}: workers on other hosts cannot write "
                         f"it. Set {URL_SETTING} to a PostgreSQL catalog.")
