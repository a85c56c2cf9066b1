"""Copy a DuckDB catalog file into a PostgreSQL catalog, without losing or doubling a row.

Every table is copied in one PostgreSQL transaction (all or nothing): the source
rows go to a temporary table shaped like the target (``LIKE``), and only the rows
the target does not already hold are inserted (``EXCEPT ALL``: a multiset
difference, so a row present twice in the source is kept twice), with
``ON CONFLICT DO NOTHING`` on the keyed tables. Running it again adds nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import duckdb

from brainstacks_core.lineage.catalog import TABLES, Catalog

log = logging.getLogger(__name__)


def table_counts(cat: Catalog) -> dict[str, int]:
    """Rows per catalog table (0 for a table not created yet)."""
    out = {}
    for t in TABLES:
        rows = cat._query(f"SELECT COUNT(*) FROM {t}")
        out[t] = int(rows[0][0]) if rows else 0
    return out


def migrate_catalog(source: str | Path, target: Catalog,
                    rewrite: Callable[[str, list[str], list[tuple]], list[tuple]] | None = None
                    ) -> dict[str, dict[str, int]]:
    """Copy every table of the DuckDB file ``source`` into the PostgreSQL catalog ``target``.

    Args:
        source: The DuckDB catalog file (opened read-only).
        target: A PostgreSQL :class:`Catalog` (its schema is created if missing).
        rewrite: ``(table, columns, rows) -> rows`` applied to every table's rows after they are
            read and before the target's transaction opens (``brainstacks_core.store_migration``
            publishes the files the artifact rows name and rewrites their paths to blob URIs).

    Returns:
        ``{table: {"source": rows in the file, "added": rows inserted now, "target": rows after}}``.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``target`` is not a PostgreSQL catalog.
    """
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"catalog migrate: no DuckDB catalog at {source}")
    if not target.shared:
        raise ValueError(f"catalog migrate: the target {target.location} is not a postgresql:// catalog")
    src = duckdb.connect(str(source), read_only=True)
    tables: dict[str, tuple[list[str], list[tuple]]] = {}
    try:
        present = {r[0] for r in src.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for table in (t for t in TABLES if t in present):
            cur = src.execute(f"SELECT * FROM {table}")
            tables[table] = ([d[0] for d in cur.description], cur.fetchall())
    finally:
        src.close()
    if rewrite is not None:
        tables = {t: (cols, rewrite(t, cols, rows)) for t, (cols, rows) in tables.items()}
    report: dict[str, dict[str, int]] = {}
    with target._transaction() as con:
        for table in TABLES:
            if table not in tables:
                report[table] = {"source": 0, "added": 0}
                continue
            cols, rows = tables[table]
            tmp = f"migrate_{table}"
            con.execute(f"DROP TABLE IF EXISTS pg_temp.{tmp}")
            con.execute(f"CREATE TEMP TABLE {tmp} (LIKE {table})")
            con.copy_rows(tmp, cols, rows)
            names = ", ".join(cols)
            added = con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {tmp} EXCEPT ALL "
                                f"SELECT {names} FROM {table} ON CONFLICT DO NOTHING").rowcount
            con.execute(f"DROP TABLE pg_temp.{tmp}")
            report[table] = {"source": len(rows), "added": int(added)}
            log.info("migrate %s: %d rows in %s, %d added", table, len(rows), source, added)
    for table, n in table_counts(target).items():
        report[table]["target"] = n
    return report


def format_migration(report: dict[str, dict[str, int]]) -> str:
    """One line per table: rows in the source, added now, in the target."""
    lines = [f"{'table':<14} {'source':>8} {'added':>8} {'target':>8}"]
    lines += [f"{t:<14} {r['source']:>8} {r['added']:>8} {r['target']:>8}" for t, r in report.items()]
    return "\n".join(lines)
