"""Lineage catalog: artifacts, transitive upstream, membership, metrics, two writers.

The first tests run on both backends (``new_catalog``: the DuckDB file and a real PostgreSQL)."""

from __future__ import annotations

import multiprocessing as mp

import duckdb
import pandas as pd
import pytest

from brainstacks_core.lineage.catalog import Catalog, CatalogLockedError


def _rec(cat, uri, version, kind="dataset", inputs=()):
    cat.record_artifact(uri=uri, version=version, kind=kind, path=None, sha256=None, code_version="c1",
                        config_hash="h", inputs=inputs, run_ids={"flow_run_id": "f1"})


def test_upstream_is_transitive_with_depth(new_catalog):
    cat = new_catalog()
    _rec(cat, "local:a.json", "src1", "source")
    _rec(cat, "local:b.json", "src2", "source")
    _rec(cat, "dataset://demo/math/train", "d1-train", inputs=["src1", "src2"])
    _rec(cat, "stack://demo/math/r1", "s1", "stack", inputs=["d1-train"])
    _rec(cat, "stack://demo/math/r1", "s1", "stack", inputs=["d1-train"])  # idempotent
    up = {a["version"]: a["depth"] for a in cat.upstream("stack://demo/math/r1")}
    assert up == {"d1-train": 1, "src1": 2, "src2": 2}
    assert cat.get("s1")["flow_run_id"] == "f1" and cat.latest("stack://demo/math/r1")["version"] == "s1"
    assert [e["event"] for e in cat.events("s1")] == ["created", "used"]
    assert len(cat.list_artifacts("source")) == 2


def test_artifacts_containing_follows_members_and_downstream(new_catalog):
    cat = new_catalog()
    _rec(cat, "local:a.json", "src1", "source")
    _rec(cat, "dataset://demo/math/train", "d1-train", inputs=["src1"])
    _rec(cat, "stack://demo/math/r1", "s1", "stack", inputs=["d1-train"])
    _rec(cat, "router://demo", "r1", "router", inputs=["s1"])
    cat.record_members("d1-train", pd.DataFrame({"record_id": ["aa", "bb"], "source_uri": ["local:a.json"] * 2,
                                                 "source_version": ["src1"] * 2, "source_row_key": ["row:0", "row:1"],
                                                 "split": ["train"] * 2}))
    found = {a["version"]: a["depth"] for a in cat.artifacts_containing("bb")}
    assert found == {"d1-train": 0, "s1": 1, "r1": 2}
    assert cat.artifacts_containing("zz") == []
    assert len(cat.members("d1-train")) == 2


def test_metrics_round_trip(new_catalog):
    cat = new_catalog()
    cat.record_metric("s1", "val_loss", 1.5, step=10, metadata={"domain": "math"})
    cat.record_metric("s1", "val_loss", 1.2, step=20)
    m = cat.metrics("s1")
    assert [x["value"] for x in m] == [1.5, 1.2] and m[0]["metadata"] == {"domain": "math"}


def test_empty_catalog_reads_return_nothing(tmp_path):
    cat = Catalog(tmp_path / "none.duckdb")
    assert cat.get("x") is None and cat.upstream("x") == [] and cat.list_artifacts() == []


def _writer(path: str, n: int, tag: str, q) -> None:
    cat = Catalog(path, timeout_s=60)
    try:
        for i in range(n):
            cat.record_artifact(uri=f"dataset://p/{tag}/train", version=f"{tag}-{i}", kind="dataset", path=None,
                                sha256=None, code_version="c", config_hash=None, inputs=[f"{tag}-{i - 1}"] if i else ())
        q.put(("ok", tag))
    except CatalogLockedError as exc:
        q.put(("locked", str(exc)))


def test_two_processes_writing_at_once_both_succeed(tmp_path):
    path = str(tmp_path / "c.duckdb")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, 25, tag, q)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = sorted(q.get(timeout=5) for _ in procs)
    assert results == [("ok", "a"), ("ok", "b")]
    cat = Catalog(path)
    assert len(cat.list_artifacts()) == 50
    assert len(cat.upstream("a-24")) == 24


def test_held_lock_fails_cleanly_naming_the_file(tmp_path):
    path = tmp_path / "c.duckdb"
    _rec(Catalog(path), "u", "v1")
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), ready, release))
    holder.start()
    assert ready.wait(60)
    try:
        with pytest.raises(CatalogLockedError, match="c.duckdb"):
            _rec(Catalog(path, timeout_s=1.0), "u", "v2")
    finally:
        release.set()
        holder.join(30)
    _rec(Catalog(path), "u", "v2")  # the file is intact and writable again
    assert {a["version"] for a in Catalog(path).list_artifacts()} == {"v1", "v2"}


def _hold(path: str, ready, release) -> None:
    con = duckdb.connect(path)
    ready.set()
    release.wait(60)
    con.close()
