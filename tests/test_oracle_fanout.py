"""Oracle fan-out (issue 20 item 4): shards on a real Dask cluster fill the oracle cache; the parent
computes nothing; a worker killed mid-oracle loses at most K forwards and leaves no duplicate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile
from brainstacks_core.routing.oracle_shards import run_oracle_shard, shard_of, shard_rows
from brainstacks_core.training.run import train_profile
from dask_kill import kill_busy_worker_when
from test_route_flow import _profile


def _keys(cat: Catalog) -> list[str]:
    return [r[0] for r in cat._query("select key from oracle_losses")]


def _trained(tmp_path: Path, **router) -> tuple[Path, object, Catalog]:
    cfg = _profile(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["router"].update(router)
    cfg.write_text(yaml.safe_dump(raw))
    profile = load_profile(cfg, artifact_root=tmp_path / "art")
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    train_profile(profile.training_setup, catalog=cat)
    return cfg, profile, cat


def test_shards_partition_the_prompts():
    rows = pd.DataFrame({"record_id": [f"r{i}" for i in range(200)]})
    parts = [shard_rows(rows, s, 3) for s in range(3)]
    ids = [set(p["record_id"]) for p in parts]
    assert sum(len(p) for p in parts) == 200 and set.union(*ids) == set(rows["record_id"])
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and min(map(len, ids)) > 40
    assert all(shard_of(f"r{i}", 3) == shard_of(f"r{i}", 3) for i in range(20))  # stable


class CountingCatalog(Catalog):
    """A real catalog that remembers how many rows each oracle write carried."""

    writes: list[int] = []

    def record_oracle_losses(self, rows):
        type(self).writes.append(len(rows))
        super().record_oracle_losses(rows)


@pytest.mark.slow
def test_shards_fill_the_cache_and_the_parent_computes_nothing(tmp_path):
    from brainstacks_core.routing.run import route_profile

    K, B = 2, 4
    _, profile, cat = _trained(tmp_path, oracle_flush_forwards=K, oracle_batch_size=B)
    ref_path = tmp_path / "reference.duckdb"
    shutil.copy(profile.catalog_path, ref_path)
    ref = Catalog(ref_path)
    whole = run_oracle_shard(profile.routing_setup, "main", 0, 1, ref)  # one shard = the one-process oracle
    assert whole["computed"] == len(_keys(ref)) - len(_keys(cat)) > 0

    CountingCatalog.writes = []
    counting = CountingCatalog(profile.catalog_path)
    outs = [run_oracle_shard(profile.routing_setup, "main", s, 2, counting) for s in range(2)]
    assert all(o["pairs"] > 0 and o["computed"] > 0 for o in outs)
    assert sum(o["computed"] for o in outs) == whole["computed"]  # the shards split the work, no overlap
    assert sorted(_keys(cat)) == sorted(_keys(ref))  # the same cache keys as the one-process oracle
    assert max(CountingCatalog.writes) <= K * B  # every write carries at most K forwards of rows
    assert len(CountingCatalog.writes) >= sum(o["forwards"] for o in outs) // K

    out = route_profile(profile.routing_setup, "main", cat, progress=False)
    assert out["summary"]["oracle"]["forwards"] == 0 and out["summary"]["oracle"]["computed"] == 0


@pytest.mark.slow
def test_fanout_on_dask_survives_a_killed_worker(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    from flows.train_router import train_router

    K, B = 1, 2
    cfg, profile, cat = _trained(tmp_path, oracle_shards=2, oracle_flush_forwards=K, oracle_batch_size=B)
    ref_path = tmp_path / "reference.duckdb"
    shutil.copy(profile.catalog_path, ref_path)
    expected = run_oracle_shard(profile.routing_setup, "main", 0, 1, Catalog(ref_path))["computed"]
    before = len(_keys(cat))

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        monkeypatch.setenv("BRAINSTACKS_DASK_ADDRESS", cluster.scheduler_address)
        killer, killed = kill_busy_worker_when(client, lambda: len(_keys(cat)) - before, expected)
        out = train_router(config_path=str(cfg), artifact_root=str(tmp_path / "art"))
        killer.join(timeout=5)

    assert killed, "no worker was killed mid-oracle"
    keys = _keys(cat)
    assert len(keys) == len(set(keys))  # no duplicate key
    assert len(keys) - before == expected  # every oracle row, once
    assert sorted(keys) == sorted(_keys(Catalog(ref_path)))
    o = out["summary"]["oracle"]
    assert o["forwards"] == 0 and o["computed"] == 0  # the parent found every loss in the cache
