"""Where the catalog's tables live: an embedded DuckDB file, or a PostgreSQL database.

:class:`~brainstacks_core.lineage.catalog.Catalog` holds the SQL (one dialect that
both engines accept); a backend only opens connections and hides the few API
differences:

``DuckDBBackend``
    One file, one machine (the default). DuckDB allows one read-write process at a
    time, so every operation opens its own connection and closes it at once; a lock
    conflict is retried with exponential backoff for up to ``timeout_s``.
``PostgresBackend`` (:mod:`brainstacks_core.lineage.pg_backend`)
    Many writers on many hosts; selected by ``lineage.catalog_url: postgresql://...``
    or ``$BRAINSTACKS_CATALOG_URL``.

A backend's ``connect(write)`` yields an object with ``execute(sql, params)``
(``?`` placeholders, returns something with ``fetchall``/``fetchone``),
``register(name, frame)`` and ``unregister(name)`` (a pandas frame as a table), or
None for a read of a DuckDB catalog that does not exist yet.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import duckdb

URL_SETTING = "lineage.catalog_url (or $BRAINSTACKS_CATALOG_URL)"


class CatalogLockedError(RuntimeError):
    """Another process held the catalog's write lock for longer than the timeout."""


class CatalogUnavailableError(RuntimeError):
    """The configured catalog database cannot be reached (the message names the masked URL and the setting)."""


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (what logs, errors and events may show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in ("postgresql", "postgres")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


class DuckDBBackend:
    """The embedded DuckDB file (one machine). ``schema`` is the catalog's DDL, run on every write connection."""

    shared = False  # no cross-host locks: the run lock stays an fcntl lock
    missing_schema_errors: tuple[type[Exception], ...] = (duckdb.CatalogException,)

    def __init__(self, path: str | Path, schema: str, timeout_s: float = 30.0) -> None:
        self.path, self.schema, self.timeout_s = Path(path), schema, timeout_s

    @property
    def location(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    @contextlib.contextmanager
    def connect(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection | None]:
        if not write and not self.path.exists():
            yield None
            return
        deadline, delay = time.monotonic() + self.timeout_s, 0.02
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                con = duckdb.connect(str(self.path), read_only=not write)
                break
            except (duckdb.IOException, duckdb.ConnectionException, duckdb.Error) as exc:
                if not _is_lock_error(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise CatalogLockedError(
                        f"catalog {self.path} is locked by another process (waited {self.timeout_s:.0f} s): {exc}"
                    ) from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        try:
            if write:
                con.execute(self.schema)
            yield con
        finally:
            con.close()
