"""The catalog's cache tables: results computed once per key and never again.

What belongs here: the key -> value tables that make a re-run free, as a mixin of
:class:`~brainstacks_core.lineage.catalog.Catalog` (which owns the connection,
the schema and the lock retries):

    eval_scores    one lm-evaluation-harness request's result per key (model identity + request), with
                   the identity of the effective model (or router) it ran on
    eval_models    what each identity depends on (base fingerprint, stack versions, or the router version),
                   so rows of models no current run uses can be pruned (:meth:`CacheTables.prune_eval_scores`)
    eval_items     per-item benchmark results of an eval version (task, mode, doc, choice scores, metrics)
    oracle_losses  one (prompt, domain combination) completion loss per key (record, base, the
                   combination's stack versions, max length, loss code)

Sizes stay small at any model scale: a row holds a key (~64 B), a few numbers or a
short JSON text (~100-500 B for a multiple-choice request), never a tensor. The
oracle at the paper's scale (10k router prompts x ~20 combinations searched) is
~200k rows, ~40 MB in DuckDB; it grows with prompts x combinations, not with tokens.
Lookups join the wanted keys as a registered frame (one query per call, not per key).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Mapping, Sequence

import duckdb
import pandas as pd

EVAL_ITEM_COLS = ["task", "task_version", "mode", "identity", "doc_id", "doc_hash", "target", "filter", "scores",
                  "metrics"]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class CacheTables:
    """Mixin: keyed cache tables. Needs ``_connect(write)``, ``_transaction()`` and ``_query`` of the catalog."""

    def _lookup(self, table: str, value_col: str, keys: Sequence[str]) -> list[tuple]:
        """``(key, value)`` rows of ``table`` for those of ``keys`` present (one joined query)."""
        if not keys:
            return []
        with self._connect(write=False) as con:
            if con is None:
                return []
            try:
                con.register("wanted_keys", pd.DataFrame({"key": list(dict.fromkeys(keys))}))
                return con.execute(f"SELECT t.key, t.{value_col} FROM {table} t JOIN wanted_keys w "
                                   "ON t.key = w.key").fetchall()
            except duckdb.CatalogException:  # file exists but has no schema yet
                return []

    def _insert_new(self, table: str, frame: pd.DataFrame, cols: Sequence[str], as_text: bool = False) -> None:
        """Bulk insert ``frame[cols]`` plus ``created_at``; keys already present are kept (first write wins).

        ``as_text``: pass the columns as Python objects (JSON text values), not as numpy dtypes.
        """
        if frame.empty:
            return
        frame = frame[list(cols)].drop_duplicates("key")
        frame = (frame.astype(object) if as_text else frame).assign(created_at=_now())
        with self._transaction() as con:
            con.register("incoming_rows", frame)
            con.execute(f"INSERT INTO {table} ({', '.join(cols)}, created_at) SELECT {', '.join(cols)}, created_at "
                        "FROM incoming_rows ON CONFLICT DO NOTHING")
            con.unregister("incoming_rows")

    # ------------------------------------------------------------ evaluation
    def eval_scores(self, keys: Sequence[str]) -> dict[str, str]:
        """Stored request results (JSON text) for those of ``keys`` already scored."""
        return dict(self._lookup("eval_scores", "value", keys))

    def record_eval_scores(self, rows: pd.DataFrame, models: Mapping[str, Sequence[str]] | None = None) -> None:
        """Store request results; keys already present are kept.

        Args:
            rows: Columns key, kind, value, and optionally identity (the effective model or router
                the result was computed on).
            models: ``{identity: [artifact versions it depends on]}`` for the identities in ``rows``
                (base fingerprint and stack versions; for routing decisions the router version).
        """
        cols = ["key", "kind", "value"] + (["identity"] if "identity" in rows.columns else [])
        with self.batch():  # the rows and their models in one transaction
            self._insert_new("eval_scores", rows, cols, as_text=True)
            if models:
                frame = pd.DataFrame({"identity": list(models),
                                      "depends": [json.dumps(sorted(set(v))) for v in models.values()]})
                frame = frame.astype(object).assign(created_at=_now())
                with self._transaction() as con:
                    con.register("incoming_models", frame)
                    con.execute("INSERT INTO eval_models (identity, depends, created_at) SELECT identity, depends, "
                                "created_at FROM incoming_models ON CONFLICT DO NOTHING")
                    con.unregister("incoming_models")

    def prune_eval_scores(self, live: set[str], dry_run: bool = True, drop_unattributed: bool = False) -> dict:
        """Delete cached request results whose model depends on a version no longer live.

        An identity is dead when any version it depends on (base, a stack, the router) is
        not in ``live`` (the versions the current runs use); its ``eval_scores`` rows and
        its ``eval_models`` row go. Rows without an identity (written before identities
        were recorded) are kept unless ``drop_unattributed``.

        Args:
            live: artifact versions still in use.
            dry_run: count only; delete nothing.
            drop_unattributed: also delete rows that carry no identity.

        Returns:
            ``{"rows", "kept", "pruned", "pruned_by_kind", "identities", "dead_identities",
            "unattributed", "dry_run"}`` (``pruned`` counts what was, or with ``dry_run`` would be, deleted).
        """
        with self._transaction() as con:
            models = con.execute("SELECT identity, depends FROM eval_models").fetchall()
            dead = [i for i, deps in models if not set(json.loads(deps)) <= live]
            con.register("dead_identities", pd.DataFrame({"identity": dead}, dtype=object))
            doomed = "(s.identity IN (SELECT identity FROM dead_identities)" + (
                " OR s.identity IS NULL)" if drop_unattributed else ")")
            by_kind = dict(con.execute(f"SELECT kind, COUNT(*) FROM eval_scores s WHERE {doomed} GROUP BY kind "
                                       "ORDER BY kind").fetchall())
            total = con.execute("SELECT COUNT(*) FROM eval_scores").fetchall()[0][0]
            unattributed = con.execute("SELECT COUNT(*) FROM eval_scores WHERE identity IS NULL").fetchall()[0][0]
            if not dry_run:
                con.execute(f"DELETE FROM eval_scores s WHERE {doomed}")
                con.execute("DELETE FROM eval_models WHERE identity IN (SELECT identity FROM dead_identities)")
            con.unregister("dead_identities")
        pruned = sum(by_kind.values())
        return {"rows": total, "kept": total - pruned, "pruned": pruned, "pruned_by_kind": by_kind,
                "identities": len(models), "dead_identities": len(dead), "unattributed": unattributed,
                "dry_run": dry_run}

    def record_eval_items(self, eval_version: str, rows: pd.DataFrame) -> None:
        """Replace the per-item results of an eval version (one bulk insert).

        Args:
            eval_version: The eval result's version.
            rows: Columns task, task_version, mode, identity, doc_id, doc_hash, target, filter, scores, metrics.
        """
        cols = EVAL_ITEM_COLS
        frame = rows[cols].astype(object).assign(eval_version=eval_version, recorded_at=_now())
        with self._transaction() as con:
            con.register("incoming_items", frame)
            con.execute("DELETE FROM eval_items WHERE eval_version = ?", [eval_version])
            con.execute(f"INSERT INTO eval_items (eval_version, {', '.join(cols)}, recorded_at) "
                        f"SELECT eval_version, {', '.join(cols)}, recorded_at FROM incoming_items")
            con.unregister("incoming_items")

    def eval_items(self, eval_version: str) -> pd.DataFrame:
        """The per-item results of an eval version (scores and metrics as JSON text)."""
        cols = EVAL_ITEM_COLS
        rows = self._query(f"SELECT {', '.join(cols)} FROM eval_items WHERE eval_version = ? "
                           "ORDER BY task, mode, doc_id", [eval_version])
        return pd.DataFrame(rows, columns=cols)

    # ------------------------------------------------------------ routing oracle
    def oracle_losses(self, keys: Sequence[str]) -> dict[str, float]:
        """Cached oracle losses for those of ``keys`` already computed (``{key: loss}``)."""
        return {k: float(v) for k, v in self._lookup("oracle_losses", "loss", keys)}

    def record_oracle_losses(self, rows: pd.DataFrame) -> None:
        """Store oracle losses (columns key, record_id, combo, loss, tokens); present keys are kept."""
        self._insert_new("oracle_losses", rows, ["key", "record_id", "combo", "loss", "tokens"])
