"""The PostgreSQL catalog (issue 20, items 2, 3, 5): cache tables, ``catalog migrate``, advisory locks with
fencing epochs, an unreachable database, and the URL's password kept out of every output.

Every test runs against a real PostgreSQL server started for the session (tests/pg_server.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from two_domain_profile import write_two_domain_profile

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.lineage.backends import CatalogUnavailableError
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.migrate import table_counts
from brainstacks_core.lineage.pg_backend import StaleEpochError, schema_name
from brainstacks_core.profile import load_profile
from brainstacks_core.training.continual import RunContext, _write_manifest
from brainstacks_core.training.run_lock import RunBusyError, run_lock
from flows.audit import cli_audit
from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path) -> Path:
    """The two-domain data profile under a unique name (its own PostgreSQL schema)."""
    chat = [{"instruction": f"Write a friendly letter {i}", "output": f"Dear friend {i}"} for i in range(15)]
    chat.append({"instruction": "Write a python function def f that will return a loop", "output": "def f(): return 1"})
    cfg = write_two_domain_profile(tmp_path, chat, 15)
    raw = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump({**raw, "name": "t" + uuid.uuid4().hex[:8]}))
    return cfg


def _pg(profile, url: str) -> Catalog:
    return Catalog(profile.catalog_path, url=url, pg_schema=schema_name(profile.name))


def _audit(cfg, capsys, **kw) -> str:
    base = {"artifact": None, "record": None, "list": False, "current": False}
    assert cli_audit(argparse.Namespace(config=str(cfg), artifact_root=None, **{**base, **kw})) == 0
    return capsys.readouterr().out


def test_cache_tables_are_idempotent_on_postgres(new_catalog):
    cat = new_catalog()
    rows = pd.DataFrame({"key": ["k1", "k2", "k1"], "kind": ["ll"] * 3, "value": ["[1]", "[2]", "[9]"],
                         "identity": ["m1", "m1", "m1"]})
    cat.record_eval_scores(rows, {"m1": ["base", "s1"]})
    cat.record_eval_scores(rows.assign(value="[7]"), {"m1": ["base", "s1"]})  # first write wins
    assert cat.eval_scores(["k1", "k2", "k3"]) == {"k1": "[1]", "k2": "[2]"}
    cat.record_oracle_losses(pd.DataFrame({"key": ["o1"], "record_id": ["r"], "combo": ["a+b"], "loss": [0.5],
                                           "tokens": [3]}))
    cat.record_oracle_losses(pd.DataFrame({"key": ["o1"], "record_id": ["r"], "combo": ["a+b"], "loss": [0.9],
                                           "tokens": [3]}))
    assert cat.oracle_losses(["o1", "o2"]) == {"o1": 0.5}
    items = pd.DataFrame({"task": ["t"], "task_version": ["1"], "mode": ["base"], "identity": ["m1"], "doc_id": [0],
                          "doc_hash": ["h"], "target": ["A"], "filter": ["none"], "scores": ["[0.1]"],
                          "metrics": ['{"acc": 1}']})
    cat.record_eval_items("e1", items)
    cat.record_eval_items("e1", items)  # replaced, not doubled
    assert cat.eval_items("e1")["doc_id"].tolist() == [0]
    out = cat.prune_eval_scores({"base"}, dry_run=False)
    assert (out["pruned"], out["dead_identities"]) == (2, 1) and cat.eval_scores(["k1"]) == {}


def test_migrate_copies_every_row_once_and_audit_answers_the_same(tmp_path, capsys, pg_server, monkeypatch):
    monkeypatch.delenv("BRAINSTACKS_CATALOG_URL", raising=False)
    cfg = _profile(tmp_path)
    profile = load_profile(cfg)
    res = prepare_all(profile.context, profile.data, run_ids={"flow_run_id": "flow-1", "task_run_id": "task-1"})
    duck = Catalog(profile.catalog_path)
    duck.record_metric(res["chat"].version, "rows", 3.0)
    duck.record_eval_scores(pd.DataFrame({"key": ["k1"], "kind": ["ll"], "value": ["[1]"]}))
    train = f"dataset://{profile.name}/chat/train"
    moves = pd.read_parquet(res["code"].moves_path)
    rid = moves[moves["action"] == "move"]["record_id"].iloc[0]
    before = {"counts": table_counts(duck), "up": _audit(cfg, capsys, artifact=train),
              "record": _audit(cfg, capsys, record=rid),
              "list": _audit(cfg, capsys, list=True)}
    assert before["counts"]["members"] > 0 and before["counts"]["events"] > 0

    assert main(["catalog", "migrate", "--config", str(cfg), "--to", pg_server.url]) == 0
    first = capsys.readouterr().out
    assert main(["catalog", "migrate", "--config", str(cfg), "--to", pg_server.url]) == 0
    second = capsys.readouterr().out
    assert pg_server.password not in first + second and "***" in first
    pg = _pg(profile, pg_server.url)
    assert table_counts(pg) == before["counts"]  # every row, once (the second run added nothing)
    assert all(line.split()[2] == "0" for line in second.splitlines()[2:]), second

    monkeypatch.setenv("BRAINSTACKS_CATALOG_URL", pg_server.url)  # the same audits, now on PostgreSQL
    assert Catalog.for_context(load_profile(cfg).context).shared
    after = {"counts": table_counts(pg), "up": _audit(cfg, capsys, artifact=train),
             "record": _audit(cfg, capsys, record=rid),
             "list": _audit(cfg, capsys, list=True)}
    assert after == before


_HOLDER = textwrap.dedent("""
    import sys, time
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.training.run_lock import run_lock
    cat = Catalog("unused.duckdb", url=sys.argv[1], pg_schema=sys.argv[2])
    with run_lock("unused-folder", "skip", catalog=cat, key="training/main") as lease:
        print("locked", lease.epoch, flush=True)
        time.sleep(600)
""")


def test_a_killed_holder_releases_the_advisory_lock_and_the_next_gets_a_new_epoch(tmp_path, pg_server):
    schema = "bs_lock_" + uuid.uuid4().hex[:8]
    cat = Catalog(tmp_path / "unused.duckdb", url=pg_server.url, pg_schema=schema)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, pg_server.url, schema], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline().split()
        assert line[0] == "locked", line
        with pytest.raises(RunBusyError, match="advisory lock training/main"):  # another host: same key
            with run_lock(tmp_path / "elsewhere", "skip", catalog=cat, key="training/main"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with run_lock(tmp_path / "elsewhere", "wait", timeout_s=60, poll_s=0.1, catalog=cat,
                      key="training/main") as lease:
            assert lease.epoch == int(line[1]) + 1
    finally:
        proc.kill()
        proc.wait()


def test_a_stale_epoch_writer_cannot_publish(tmp_path, pg_server, caplog):
    cat = Catalog(tmp_path / "unused.duckdb", url=pg_server.url, pg_schema="bs_fence_" + uuid.uuid4().hex[:8])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir, catalog=cat, key="training/main/k1") as old:
        stale = cat.fenced(old)
        stale.record_metric("s0", "val_loss", 1.0)  # current epoch: published
        with Catalog(tmp_path / "x", url=pg_server.url)._backend.open() as admin:  # the lock's session dies
            admin.execute("SELECT pg_terminate_backend(%s)", [old.con.info.backend_pid])
        with run_lock(tmp_path / "other-host", "skip", catalog=cat, key="training/main/k1") as new:
            assert new.epoch == old.epoch + 1
            with caplog.at_level(logging.ERROR), pytest.raises(StaleEpochError, match="stale"):
                stale.record_artifact(uri="stack://t/main/chat/r1", version="s1", kind="stack", path=None,
                                      sha256=None, code_version="c", config_hash=None)
            assert "publish refused" in caplog.text
            assert cat.get("s1") is None  # nothing of the refused publish was written
            ctx = RunContext("t", "main", run_dir, "fp", catalog=stale)
            with pytest.raises(StaleEpochError):  # the round's manifest commit is refused too
                _write_manifest(ctx, {"domains": {}})
            assert not (run_dir / "manifest.json").exists()
            _write_manifest(RunContext("t", "main", run_dir, "fp", catalog=cat.fenced(new)), {"domains": {}})
            assert (run_dir / "manifest.json").exists()
    assert [m["value"] for m in cat.metrics("s0")] == [1.0]


def test_an_unreachable_database_is_one_clear_error_and_nothing_local(tmp_path, capsys, monkeypatch):
    cfg = _profile(tmp_path)
    url = "postgresql://bs:hunter2-secret@127.0.0.1:9/brainstacks"  # port 9 (discard): refused
    monkeypatch.setenv("BRAINSTACKS_CATALOG_URL", url)
    assert main(["audit", "--config", str(cfg), "--list"]) == 2
    err = capsys.readouterr().err
    assert "postgresql://bs:***@127.0.0.1:9/brainstacks" in err and "lineage.catalog_url" in err
    assert "BRAINSTACKS_CATALOG_URL" in err and "hunter2-secret" not in err and "Traceback" not in err
    profile = load_profile(cfg)
    with pytest.raises(CatalogUnavailableError, match="unreachable"):
        prepare_all(profile.context, profile.data)
    assert not list(profile.store.rglob("*.duckdb"))  # no local file standing in for the catalog


def test_the_catalog_password_reaches_no_log_row_event_or_file(tmp_path, pg_server, monkeypatch, caplog):
    from brainstacks_core.lineage.openlineage import OpenLineageEmitter

    cfg = _profile(tmp_path)
    monkeypatch.setenv("BRAINSTACKS_CATALOG_URL", pg_server.url)
    profile = load_profile(cfg)
    cat = Catalog.for_context(profile.context)
    with caplog.at_level(logging.DEBUG):
        prepare_all(profile.context, profile.data, catalog=cat, run_ids={"flow_run_id": "f1"})
        with run_lock(profile.store / "training" / "main", catalog=cat, key="training/main"):
            pass
        OpenLineageEmitter(profile.lineage, profile.store, profile.name, cat.location).emit(
            "COMPLETE", "prepare", str(uuid.uuid4()), parameters={"config_path": str(cfg)})
        logging.getLogger("probe").info("context %r profile %r", profile.context, profile)
    secret = pg_server.password
    assert cat.list_artifacts() and "***" in cat.location
    assert secret not in caplog.text and "context" in caplog.text
    files = [p for p in profile.store.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in files)
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    assert secret not in profile.model_dump_json() and secret not in json.dumps(profile.context.model_dump(
        mode="json"))
    with cat._connect(write=False) as con:  # every catalog row, as text
        for table in ("artifacts", "events", "members", "metrics", "run_epochs"):
            assert secret not in str(con.execute(f"SELECT * FROM {table}").fetchall())
