"""The lineage catalog: artifacts, edges, row membership and metrics, in DuckDB or PostgreSQL.

Tables:
    artifacts  one row per version (uri, kind, path, sha256, code version, config
               hash, created/last-used time, Prefect run ids, metadata JSON)
    edges      input version -> output version
    members    which record_ids (from which source rows) are in a dataset version
    metrics    named values per version (losses, forgetting matrix entries)
    events     every time a version is recorded or re-used (``created``/``used``), or read by a run
               without being recorded (``read``)
    eval_scores  one harness request's result per key (model identity + request), never computed twice;
                 its ``identity`` column names the effective model (or router) it was computed on
    eval_models  per identity, the artifact versions it depends on (base, stacks or router): what
                 ``prune_eval_scores`` checks against the versions current runs still use
    eval_items   per-item benchmark results of an eval version (task, mode, doc, choice scores, metrics)
    oracle_losses  one routing-oracle loss per (prompt, combination) key
    (the three cache tables' methods are in :mod:`brainstacks_core.lineage.cache_tables`)
    run_epochs     per lock name, the fencing epoch of its current holder (PostgreSQL locks only)

Where the tables live is a backend (:mod:`brainstacks_core.lineage.backends`): the
embedded DuckDB file by default (one machine; every operation opens its own
connection and closes it at once, a lock conflict is retried with backoff for up to
``timeout_s`` and then raised as :class:`CatalogLockedError` naming the file), or a
PostgreSQL database (``url``; many writers on many hosts). The SQL here is one
dialect both engines accept. Writes are single transactions, so a killed writer
leaves the catalog as it was before the write.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from brainstacks_core.lineage.backends import (CatalogLockedError, CatalogUnavailableError,  # noqa: F401 - re-export
                                               DuckDBBackend, is_postgres_url, mask_url)
from brainstacks_core.lineage.cache_tables import CacheTables, _now

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    version VARCHAR PRIMARY KEY, uri VARCHAR NOT NULL, kind VARCHAR NOT NULL, path VARCHAR, sha256 VARCHAR,
    code_version VARCHAR NOT NULL, config_hash VARCHAR, created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP NOT NULL, flow_run_id VARCHAR, task_run_id VARCHAR, metadata VARCHAR);
CREATE TABLE IF NOT EXISTS edges (input_version VARCHAR NOT NULL, output_version VARCHAR NOT NULL,
    PRIMARY KEY (input_version, output_version));
CREATE TABLE IF NOT EXISTS members (dataset_version VARCHAR NOT NULL, record_id VARCHAR NOT NULL,
    source_uri VARCHAR, source_version VARCHAR, source_row_key VARCHAR, split VARCHAR, origin_domain VARCHAR);
ALTER TABLE members ADD COLUMN IF NOT EXISTS origin_domain VARCHAR;
CREATE TABLE IF NOT EXISTS metrics (version VARCHAR NOT NULL, name VARCHAR NOT NULL, value DOUBLE,
    step INTEGER, metadata VARCHAR, recorded_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS events (version VARCHAR NOT NULL, event VARCHAR NOT NULL, event_at TIMESTAMP NOT NULL,
    flow_run_id VARCHAR, task_run_id VARCHAR);
CREATE TABLE IF NOT EXISTS eval_scores (key VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, value VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL);
ALTER TABLE eval_scores ADD COLUMN IF NOT EXISTS identity VARCHAR;
CREATE TABLE IF NOT EXISTS eval_models (identity VARCHAR PRIMARY KEY, depends VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS eval_items (eval_version VARCHAR NOT NULL, task VARCHAR NOT NULL, task_version VARCHAR,
    mode VARCHAR NOT NULL, identity VARCHAR NOT NULL, doc_id INTEGER NOT NULL, doc_hash VARCHAR, target VARCHAR,
    filter VARCHAR, scores VARCHAR, metrics VARCHAR, recorded_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS oracle_losses (key VARCHAR PRIMARY KEY, record_id VARCHAR NOT NULL,
    combo VARCHAR NOT NULL, loss DOUBLE NOT NULL, tokens INTEGER NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS run_epochs (lock_key VARCHAR PRIMARY KEY, epoch BIGINT NOT NULL, holder VARCHAR,
    taken_at TIMESTAMP NOT NULL);
"""
TABLES = ["artifacts", "edges", "members", "metrics", "events", "eval_scores", "eval_models", "eval_items",
          "oracle_losses", "run_epochs"]
_ART_COLS = ["version", "uri", "kind", "path", "sha256", "code_version", "config_hash", "created_at",
             "last_used_at", "flow_run_id", "task_run_id", "metadata"]
_MEMBER_COLS = ["record_id", "source_uri", "source_version", "source_row_key", "split", "origin_domain"]


def _row(cols: Sequence[str], values: Sequence[Any]) -> dict:
    out = dict(zip(cols, values))
    if out.get("metadata"):
        out["metadata"] = json.loads(out["metadata"])
    return out


class Catalog(CacheTables):
    """A lineage catalog: the DuckDB file at ``path``, or the PostgreSQL database at ``url``.

    Args:
        path: The DuckDB file (created with its schema on first write); unused with ``url``.
        timeout_s: How long to retry a DuckDB lock conflict (PostgreSQL: the connect timeout).
        url: ``postgresql://...``: keep the tables in PostgreSQL instead (schema ``pg_schema``).
        pg_schema: The PostgreSQL schema of this catalog (``bs_<profile>``; :meth:`for_context` sets it).
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0, url: str | None = None,
                 pg_schema: str = "bs_default") -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._batch = None
        self._fence: tuple[str, int] | None = None
        self.publish_path = None  # an object-store profile: local path -> blob URI (lineage.publisher)
        if url and not is_postgres_url(url):
            raise ValueError(f"catalog url {mask_url(url)}: only postgresql:// URLs are supported "
                             "(leave lineage.catalog_url unset for the DuckDB file)")
        if url:
            from brainstacks_core.lineage.pg_backend import PostgresBackend

            self._backend = PostgresBackend(url, _SCHEMA, pg_schema, timeout_s)
        else:
            self._backend = DuckDBBackend(self.path, _SCHEMA, timeout_s)

    @classmethod
    def for_context(cls, ctx, timeout_s: float = 30.0) -> "Catalog":
        """The catalog of a store context: PostgreSQL when ``ctx.catalog_url`` is set, else its DuckDB file."""
        url = ctx.catalog_url.get_secret_value() if getattr(ctx, "catalog_url", None) else None
        if url:
            from brainstacks_core.lineage.pg_backend import schema_name

            cat = cls(ctx.catalog_path, timeout_s, url=url, pg_schema=schema_name(ctx.name))
        else:
            cat = cls(ctx.catalog_path, timeout_s)
        if getattr(ctx, "remote", None) is not None:  # rows name blob URIs, never this worker's paths
            from brainstacks_core.lineage.publisher import PathPublisher
            from brainstacks_core.lineage.store_sync import blob_store

            cat.publish_path = PathPublisher(blob_store(ctx), ctx.store, ctx.repo_root)
        return cat

    @property
    def shared(self) -> bool:
        """True for a catalog many hosts share (PostgreSQL): locks are then advisory locks in it."""
        return self._backend.shared

    @property
    def location(self) -> str:
        """The DuckDB file, or the PostgreSQL URL with its password masked (safe to print and log)."""
        return self._backend.location

    def exists(self) -> bool:
        """Whether anything was ever written (DuckDB: the file exists; PostgreSQL: an artifact is recorded)."""
        return self._backend.exists()

    # ------------------------------------------------------------ locks and fencing
    def try_lease(self, key: str):
        """PostgreSQL only: the advisory lock of ``key`` with a new fencing epoch, or None when held elsewhere."""
        return self._backend.try_lease(key)

    def lock_holder(self, key: str) -> str:
        """Who holds ``key``'s lock (pid, host, since, epoch), for log lines."""
        return self._backend.holder(key)

    def fenced(self, lease) -> "Catalog":
        """A view of this catalog whose every write transaction first checks ``lease``'s epoch is current.

        A writer whose lock was taken over since (its session died and another host
        locked) gets :class:`~brainstacks_core.lineage.pg_backend.StaleEpochError` and writes nothing.
        """
        view = copy.copy(self)
        view._fence = (lease.key, lease.epoch)
        return view

    def check_fence(self) -> None:
        """Raise ``StaleEpochError`` unless this view's lease epoch is still current (no-op unfenced)."""
        if self._fence is not None:
            with self._transaction():
                pass

    # ------------------------------------------------------------ connections
    @contextlib.contextmanager
    def batch(self) -> Iterator["Catalog"]:
        """Every call inside runs on one connection in one transaction: all or nothing.

        For many writes at once (a prepare registering every domain): one lock
        instead of one per call, and a failure part-way records nothing.
        """
        if self._batch is not None:
            yield self
            return
        with self._connect(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            self._batch = con
            try:
                self._check_fence(con)
                yield self
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                self._batch = None

    @contextlib.contextmanager
    def _connect(self, write: bool) -> Iterator[Any]:
        if self._batch is not None:
            yield self._batch
            return
        with self._backend.connect(write) as con:
            yield con

    def _check_fence(self, con) -> None:
        if self._fence is not None:
            self._backend.check_fence(con, *self._fence)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        if self._batch is not None:
            yield self._batch
            return
        with self._connect(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                self._check_fence(con)
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------ artifacts
    def record_artifact(self, *, uri: str, version: str, kind: str, path: str | None, sha256: str | None,
                        code_version: str, config_hash: str | None, inputs: Sequence[str] = (),
                        metadata: dict | None = None, run_ids: dict | None = None) -> None:
        """Record an artifact version and its input edges (idempotent on ``version``).

        Recording a version that exists logs a ``used`` event and refreshes
        ``last_used_at`` (so :meth:`latest` returns what the last run used).

        Args:
            uri: Stable identity, e.g. ``dataset://demo/math/train``.
            version: Content version (primary key).
            kind: ``source``, ``dataset``, ``stack``, ``router``, ...
            path: Where the artifact lives, if it is a file.
            sha256: Checksum of that file.
            code_version: ``versioning.code_version()`` of the producer.
            config_hash: Hash of the step config that produced it.
            inputs: Versions of the upstream artifacts.
            metadata: Any JSON-able details (counts, reports).
            run_ids: ``{"flow_run_id": ..., "task_run_id": ...}`` under Prefect.
        """
        run_ids = run_ids or {}
        if self.publish_path is not None:  # the blob first, then the row that names it
            path = self.publish_path(path)
        now = _now()
        meta = json.dumps(metadata, sort_keys=True, default=str) if metadata is not None else None
        with self._transaction() as con:
            exists = con.execute("SELECT uri FROM artifacts WHERE version = ?", [version]).fetchone()
            if exists is None:
                con.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [version, uri, kind, path, sha256, code_version, config_hash, now, now,
                             run_ids.get("flow_run_id"), run_ids.get("task_run_id"), meta])
            else:
                if exists[0] != uri:
                    raise ValueError(f"version {version} is already recorded for {exists[0]}, not {uri}")
                con.execute("UPDATE artifacts SET last_used_at = ? WHERE version = ?", [now, version])
            for inp in dict.fromkeys(inputs):
                con.execute("INSERT INTO edges VALUES (?, ?) ON CONFLICT DO NOTHING", [inp, version])
            con.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                        [version, "created" if exists is None else "used", now,
                         run_ids.get("flow_run_id"), run_ids.get("task_run_id")])

    def record_reads(self, versions: Sequence[str], run_ids: dict | None) -> None:
        """Log a ``read`` event per version under the run's ids (what a run used without recording it).

        Idempotent per run: a version already read by the same flow run is not logged twice.
        """
        run_ids = run_ids or {}
        wanted = [v for v in dict.fromkeys(versions) if v]
        if not wanted or not run_ids.get("flow_run_id"):
            return
        now = _now()
        with self._transaction() as con:
            for v in wanted:
                con.execute("INSERT INTO events SELECT ?, 'read', ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM events "
                            "WHERE version = ? AND event = 'read' AND flow_run_id = ?)",
                            [v, now, run_ids["flow_run_id"], run_ids.get("task_run_id"), v, run_ids["flow_run_id"]])

    def run_artifacts(self, flow_run_ids: Sequence[str]) -> list[dict]:
        """Every artifact a flow run recorded or read, with ``events`` (set of event names) and ``inputs``.

        ``inputs`` are the artifact's direct input versions (edges), whichever run recorded them.
        """
        ids = [str(i) for i in flow_run_ids if i]
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        acols = ", ".join("a." + c for c in _ART_COLS)
        rows = self._query(f"SELECT {acols}, array_agg(DISTINCT e.event), "
                           f"(SELECT array_agg(input_version ORDER BY input_version) FROM edges "
                           f"WHERE output_version = a.version) FROM events e JOIN artifacts a ON a.version = "
                           f"e.version WHERE e.flow_run_id IN ({marks}) GROUP BY {acols} ORDER BY a.uri, a.version",
                           ids)
        return [{**_row(_ART_COLS, r[:-2]), "events": set(r[-2]), "inputs": list(r[-1] or [])} for r in rows]

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._connect(write=False) as con:
            if con is None:
                return []
            try:
                return con.execute(sql, list(params)).fetchall()
            except self._backend.missing_schema_errors:  # file exists but has no schema yet
                return []

    def get(self, version_or_uri: str) -> dict | None:
        """The artifact with this version, else the latest version of this URI."""
        rows = self._query(f"SELECT {', '.join(_ART_COLS)} FROM artifacts WHERE version = ?", [version_or_uri])
        return _row(_ART_COLS, rows[0]) if rows else self.latest(version_or_uri)

    def latest(self, uri: str) -> dict | None:
        """The most recently recorded or used version of ``uri``."""
        rows = self._query(f"SELECT {', '.join(_ART_COLS)} FROM artifacts WHERE uri = ? "
                           "ORDER BY last_used_at DESC, created_at DESC LIMIT 1", [uri])
        return _row(_ART_COLS, rows[0]) if rows else None

    def list_artifacts(self, kind: str | None = None) -> list[dict]:
        """Every artifact (optionally of one kind), oldest first."""
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        rows = self._query(f"SELECT {', '.join(_ART_COLS)} FROM artifacts {where} ORDER BY created_at, uri", params)
        return [_row(_ART_COLS, r) for r in rows]

    def _walk(self, start: str, direction: str) -> list[dict]:
        a, b = ("input_version", "output_version") if direction == "up" else ("output_version", "input_version")
        acols = ", ".join("a." + c for c in _ART_COLS)
        sql = f"""
            WITH RECURSIVE walk(version, depth) AS (
                SELECT {a}, 1 FROM edges WHERE {b} = ?
                UNION
                SELECT e.{a}, w.depth + 1 FROM edges e JOIN walk w ON e.{b} = w.version WHERE w.depth < 64)
            SELECT {acols}, MIN(w.depth) AS depth
            FROM walk w JOIN artifacts a ON a.version = w.version
            GROUP BY {acols} ORDER BY depth, a.uri"""
        return [_row(_ART_COLS + ["depth"], r) for r in self._query(sql, [start])]

    def upstream(self, version_or_uri: str) -> list[dict]:
        """Every artifact transitively upstream of one, each with its ``depth`` (1 = direct input)."""
        art = self.get(version_or_uri)
        return self._walk(art["version"], "up") if art else []

    def downstream(self, version_or_uri: str) -> list[dict]:
        """Every artifact transitively built from one, each with its ``depth``."""
        art = self.get(version_or_uri)
        return self._walk(art["version"], "down") if art else []

    # ------------------------------------------------------------ rows
    def record_members(self, dataset_version: str, rows: pd.DataFrame) -> None:
        """Replace the row membership of a dataset version (one bulk insert).

        Args:
            dataset_version: The dataset's version.
            rows: Columns record_id, source_uri, source_version, source_row_key, split.
        """
        missing = [c for c in _MEMBER_COLS if c not in rows.columns and c != "origin_domain"]
        if missing:
            raise ValueError(f"record_members: missing columns {missing}")
        if "origin_domain" not in rows.columns:
            rows = rows.assign(origin_domain=None)
        frame = rows[_MEMBER_COLS].astype(object).assign(dataset_version=dataset_version)
        with self._transaction() as con:
            con.register("incoming_members", frame)
            con.execute("DELETE FROM members WHERE dataset_version = ?", [dataset_version])
            con.execute("INSERT INTO members (dataset_version, record_id, source_uri, source_version, source_row_key, "
                        "split, origin_domain) SELECT dataset_version, record_id, source_uri, source_version, "
                        "source_row_key, split, origin_domain FROM incoming_members")
            con.unregister("incoming_members")

    def members(self, dataset_version: str) -> pd.DataFrame:
        """The membership rows of one dataset version."""
        rows = self._query(f"SELECT {', '.join(_MEMBER_COLS)} FROM members WHERE dataset_version = ?",
                           [dataset_version])
        return pd.DataFrame(rows, columns=_MEMBER_COLS)

    def artifacts_containing(self, record_id: str) -> list[dict]:
        """Datasets holding ``record_id`` (depth 0, with ``source_row_key``) and everything downstream."""
        rows = self._query("SELECT DISTINCT dataset_version, source_uri, source_row_key, split, origin_domain "
                           "FROM members WHERE record_id = ?", [record_id])
        out: dict[str, dict] = {}
        for version, src, key, split, origin in rows:
            art = self.get(version)
            if art is None:
                continue
            out.setdefault(version, {**art, "depth": 0, "source_uri_of_record": src,
                                     "source_row_key": key, "split": split, "origin_domain": origin})
            for down in self.downstream(version):
                if down["version"] not in out or out[down["version"]]["depth"] > down["depth"]:
                    out[down["version"]] = down
        return sorted(out.values(), key=lambda a: (a["depth"], a["uri"]))

    # ------------------------------------------------------------ metrics
    def record_metric(self, version: str, name: str, value: float, step: int | None = None,
                      metadata: dict | None = None) -> None:
        """Store one named value for an artifact version (loss, forgetting entry, ...).

        Upsert on (version, name, step): recording the same metric again (a resumed
        run) replaces it instead of duplicating it.
        """
        meta = json.dumps(metadata, sort_keys=True, default=str) if metadata is not None else None
        with self._transaction() as con:
            con.execute("DELETE FROM metrics WHERE version = ? AND name = ? AND step IS NOT DISTINCT FROM ?",
                        [version, name, step])
            con.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                        [version, name, float(value), step, meta, _now()])

    def metrics(self, version: str) -> list[dict]:
        """Every metric of a version, in recording order."""
        cols = ["version", "name", "value", "step", "metadata", "recorded_at"]
        rows = self._query(f"SELECT {', '.join(cols)} FROM metrics WHERE version = ? ORDER BY recorded_at", [version])
        return [_row(cols, r) for r in rows]

    def events(self, version: str) -> list[dict]:
        """``created`` / ``used`` events of a version."""
        cols = ["version", "event", "event_at", "flow_run_id", "task_run_id"]
        return [dict(zip(cols, r)) for r in self._query(
            f"SELECT {', '.join(cols)} FROM events WHERE version = ? ORDER BY event_at", [version])]
