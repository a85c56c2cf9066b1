"""The PostgreSQL catalog backend (psycopg 3), its advisory-lock leases and fencing epochs.

Safe for many writers on many hosts: every write is one transaction, every cache
insert is ``ON CONFLICT DO NOTHING`` on its key. A profile's tables live in their own
PostgreSQL schema (``bs_<profile>``), so several profiles can share one database the
way they had one DuckDB file each. One connection per thread is kept open (reads
run in autocommit; writes in explicit ``BEGIN``/``COMMIT``).

Locks across hosts (:class:`PgLease`): ``pg_try_advisory_lock`` on a dedicated
session held for the lock's life, keyed by a stable 64-bit hash of the lock's name.
Taking it increments the lock's epoch in ``run_epochs``; a publish made through
:meth:`PostgresBackend.check_fence` re-reads the epoch in the publishing
transaction (``FOR SHARE``) and is refused (:class:`StaleEpochError`, logged) when
another holder took the lock since. A holder whose session dies (host crash,
``kill -9``) loses the lock when the server notices the closed connection.

The password of the URL never appears in a message: errors name
:func:`~brainstacks_core.lineage.backends.mask_url` of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import pandas as pd

from brainstacks_core.lineage.backends import URL_SETTING, CatalogUnavailableError, mask_url

log = logging.getLogger(__name__)

_local = threading.local()  # {(pid, url, schema): connection} per thread
_schema_ready: set[tuple[str, str]] = set()
_schema_lock = threading.Lock()


class StaleEpochError(RuntimeError):
    """A writer's lock epoch is no longer the current one: another holder took the lock; the publish is refused."""


def schema_name(profile: str) -> str:
    """The PostgreSQL schema of a profile's catalog: ``bs_<profile>`` (lowercase, ``[a-z0-9_]``)."""
    return "bs_" + re.sub(r"[^a-z0-9_]", "_", profile.lower())


def lock_id(schema: str, key: str) -> int:
    """A stable signed 64-bit advisory-lock id for ``key`` (sha256, the same on every host and Python)."""
    return int.from_bytes(hashlib.sha256(f"{schema}\0{key}".encode()).digest()[:8], "big", signed=True)


def _scrub(text: str, url: str) -> str:
    from urllib.parse import urlsplit

    pw = urlsplit(url).password
    return text.replace(pw, "***") if pw else text


def _pg_type(series: pd.Series) -> str:
    kind = series.dtype.kind
    if kind in "iu":
        return "BIGINT"
    if kind == "f":
        return "DOUBLE PRECISION"
    if kind == "M":
        return "TIMESTAMP"
    if kind == "b":
        return "BOOLEAN"
    values = [v for v in series if v is not None and not (isinstance(v, float) and v != v)]
    if values and all(isinstance(v, (int,)) and not isinstance(v, bool) for v in values):
        return "BIGINT"
    if values and all(isinstance(v, float) for v in values):
        return "DOUBLE PRECISION"
    if values and all(isinstance(v, datetime) for v in values):
        return "TIMESTAMP"
    return "TEXT"


def _native(v: Any) -> Any:
    if v is None or (isinstance(v, float) and v != v) or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalar
        return v.item()
    return v


class PgConnection:
    """A psycopg connection with the DuckDB-style calls the catalog uses (``?`` placeholders, ``register``)."""

    def __init__(self, con) -> None:
        self.con = con

    def execute(self, sql: str, params: Sequence[Any] | None = None):
        if params:
            return self.con.execute(sql.replace("?", "%s"), [_native(p) for p in params])
        return self.con.execute(sql)

    def register(self, name: str, frame: pd.DataFrame) -> None:
        """Copy ``frame`` into a temporary table ``name`` (column types from the frame's values)."""
        cols = list(frame.columns)
        self.con.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
        self.con.execute(f"CREATE TEMP TABLE {name} ("
                         + ", ".join(f"{c} {_pg_type(frame[c])}" for c in cols) + ")")
        self.copy_rows(name, cols, ([_native(v) for v in row] for row in frame.itertuples(index=False, name=None)))

    def copy_rows(self, table: str, cols: Sequence[str], rows) -> None:
        with self.con.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def unregister(self, name: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")


class PostgresBackend:
    """A catalog in PostgreSQL.

    Args:
        url: ``postgresql://user:password@host:port/db[?sslmode=require]``.
        schema: the DDL of the catalog's tables (DuckDB dialect; ``DOUBLE`` becomes ``DOUBLE PRECISION``).
        pg_schema: the PostgreSQL schema the tables live in (``bs_<profile>``).
        timeout_s: connect timeout.
    """

    shared = True
    missing_schema_errors: tuple[type[Exception], ...] = ()

    def __init__(self, url: str, schema: str, pg_schema: str, timeout_s: float = 30.0) -> None:
        self.url, self.pg_schema, self.timeout_s = url, pg_schema, timeout_s
        self.schema = re.sub(r"\bDOUBLE\b", "DOUBLE PRECISION", schema)

    @property
    def location(self) -> str:
        return f"{mask_url(self.url)} (schema {self.pg_schema})"

    def exists(self) -> bool:
        with self.connect(write=False) as con:
            return con.execute("SELECT 1 FROM artifacts LIMIT 1").fetchone() is not None

    def open(self, autocommit: bool = True):
        """A new psycopg connection with ``search_path`` set to the profile's schema (raises a clear error)."""
        import psycopg

        try:
            con = psycopg.connect(self.url, autocommit=autocommit, connect_timeout=max(1, int(self.timeout_s)),
                                  options=f"-c search_path={self.pg_schema}", keepalives=1, keepalives_idle=15,
                                  keepalives_interval=5, keepalives_count=3)
        except psycopg.OperationalError as exc:
            raise CatalogUnavailableError(
                f"catalog {mask_url(self.url)} (set by {URL_SETTING}) is unreachable: "
                f"{_scrub(str(exc).strip(), self.url)}") from None
        return con

    def _ensure_schema(self, con) -> None:
        key = (self.url, self.pg_schema)
        if key in _schema_ready:
            return
        with _schema_lock:
            con.execute("BEGIN")
            con.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id(self.pg_schema, "__schema__")])
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.pg_schema}"')
            for stmt in filter(str.strip, self.schema.split(";")):
                con.execute(stmt)
            con.execute("COMMIT")
            _schema_ready.add(key)

    def _connection(self):
        cache = getattr(_local, "cons", None)
        if cache is None:
            cache = _local.cons = {}
        key = (os.getpid(), self.url, self.pg_schema)
        con = cache.get(key)
        if con is None or con.closed or con.broken:
            con = cache[key] = self.open()
            self._ensure_schema(con)
        return con

    @contextlib.contextmanager
    def connect(self, write: bool) -> Iterator[PgConnection]:
        con = self._connection()
        try:
            yield PgConnection(con)
        except BaseException:
            if con.info.transaction_status.name == "INERROR":
                con.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ locks and fencing
    def try_lease(self, key: str) -> "PgLease | None":
        """Take the advisory lock of ``key`` on a new session and bump its epoch; None when another holds it."""
        con = self.open()
        lid = lock_id(self.pg_schema, key)
        if not con.execute("SELECT pg_try_advisory_lock(%s)", [lid]).fetchone()[0]:
            con.close()
            return None
        self._ensure_schema(con)
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        epoch = con.execute("INSERT INTO run_epochs (lock_key, epoch, holder, taken_at) VALUES (%s, 1, %s, %s) "
                            "ON CONFLICT (lock_key) DO UPDATE SET epoch = run_epochs.epoch + 1, "
                            "holder = EXCLUDED.holder, taken_at = EXCLUDED.taken_at RETURNING epoch",
                            [key, holder, now]).fetchone()[0]
        log.info("lock %s taken (epoch %d) on %s", key, epoch, self.location)
        return PgLease(self, key, int(epoch), con)

    def holder(self, key: str) -> str:
        with self.connect(write=False) as con:
            row = con.execute("SELECT holder, epoch FROM run_epochs WHERE lock_key = ?", [key]).fetchone()
        if not row:
            return "another process"
        info = json.loads(row[0] or "{}")
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} (epoch {row[1]})"

    @staticmethod
    def check_fence(con: PgConnection, key: str, epoch: int) -> None:
        """Inside a write transaction: refuse (and log) the publish unless ``epoch`` is still ``key``'s epoch."""
        row = con.execute("SELECT epoch FROM run_epochs WHERE lock_key = ? FOR SHARE", [key]).fetchone()
        current = None if row is None else int(row[0])
        if current != epoch:
            log.error("publish refused: lock %s was taken again (epoch %s, this writer holds %d)", key, current,
                      epoch)
            raise StaleEpochError(f"lock {key}: this writer's epoch {epoch} is stale (current {current}); another "
                                  "process took the lock since, so this publish is refused")


class PgLease:
    """A held advisory lock: its ``key``, its fencing ``epoch`` and the session that holds it.

    ``release()`` unlocks and closes the session; a crashed holder's session closes by itself.
    """

    def __init__(self, backend: PostgresBackend, key: str, epoch: int, con) -> None:
        self.backend, self.key, self.epoch, self.con = backend, key, epoch, con

    def release(self) -> None:
        try:
            if not self.con.closed and not self.con.broken:
                self.con.execute("SELECT pg_advisory_unlock(%s)", [lock_id(self.backend.pg_schema, self.key)])
        except Exception:  # noqa: BLE001 - the session is gone: the server already released the lock
            log.warning("lock %s: its session was lost before release (the server released it)", self.key)
        finally:
            self.con.close()
