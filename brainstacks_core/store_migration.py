"""Move a one-machine store (a local ``artifact_root`` folder and its DuckDB catalog) into a URL store.

``brainstacks catalog migrate --config P --to postgresql://... --store-to s3://bucket/prefix``
leaves the profile's folder and its ``catalog.duckdb`` untouched and writes, in the order a
stage of an object-store profile writes (:mod:`brainstacks_core.lineage.store_sync`):

1. **blobs**: every file a catalog row names, as the pipeline would have published it: a
   dataset version's folder as one tree (:func:`~brainstacks_core.data.published.publish_dataset`),
   any other file as a blob, a folder (a base) as a portable tree
   (:class:`~brainstacks_core.lineage.publisher.PathPublisher`); a source file's path made
   relative (:func:`~brainstacks_core.data.published.portable_path`);
2. **rows**: every table copied into the PostgreSQL catalog
   (:func:`~brainstacks_core.lineage.migrate.migrate_catalog`) with each artifact row's ``path``
   rewritten to its blob URI (a dataset row also names its tree and manifest), no host path left;
3. **pointers**: each domain's current dataset version, each training run
   (:func:`~brainstacks_core.training.published_run.publish_run`) and each routing folder.

Blobs are content-addressed and rows are copied as a multiset difference, so a second
migration uploads nothing, adds no row and writes every pointer with the bytes it holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from brainstacks_core.data import published as remote
from brainstacks_core.data.pipeline import from_manifest
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.migrate import migrate_catalog
from brainstacks_core.lineage.publisher import PathPublisher
from brainstacks_core.lineage.store_sync import blob_store, publish_pointer
from brainstacks_core.routing.run_inputs import POINTER_KIND as ROUTING_KIND
from brainstacks_core.routing.run_inputs import RESULT_FILE, routing_dir
from brainstacks_core.training.published_run import publish_run

log = logging.getLogger(__name__)

SOURCE_KINDS = ("source", "eval_set")
"""Row kinds naming an input file outside the store's artifacts (recorded with a relative path)."""


def _dumps(meta: dict) -> str:
    """Metadata JSON as :meth:`Catalog.record_artifact` writes it."""
    return json.dumps(meta, sort_keys=True, default=str)


class _RowRewriter:
    """Publishes the files of the source rows (blobs first) and gives each row its URL-store form.

    Args:
        ctx: The publishing context: the profile's name, the *source* folder as ``store`` (its
            absolute path becomes the portable token) and the target's ``remote``.
    """

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx, self.store = ctx, blob_store(ctx)
        self.publish = PathPublisher(self.store, ctx.store, ctx.repo_root)
        self.datasets: dict[str, dict] = {}  # dataset folder -> {"prepared", "published"}
        self.missing: list[str] = []
        self.root = Path(ctx.store).resolve()

    def dataset(self, folder: Path) -> dict:
        """Publish one dataset version's folder (once) as the pipeline's tree."""
        key = str(folder.resolve())
        if key not in self.datasets:
            p = from_manifest(folder / "manifest.json", cache_hit=True)
            published = remote.publish_dataset(self.store, self.ctx, p, {p.train_path.parent / "manifest.json":
                                                                         self._manifest(folder / "manifest.json")})
            self.datasets[key] = {"prepared": p, "published": published}
        return self.datasets[key]

    def _manifest(self, path: Path) -> bytes:
        """A dataset manifest as an object-store profile writes it: source and eval-set paths relative
        to the repository or the store (``data.pipeline._portable``), the rest as it is."""
        m = json.loads(path.read_text(encoding="utf-8"))
        for key in ("sources", "eval_sets"):
            m[key] = [{**e, "path": remote.portable_path(e["path"], self.ctx)} if e.get("path") else e
                      for e in m.get(key, [])]
        return (json.dumps(m, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")

    def _relative(self, value):
        """``value`` (metadata JSON) with every absolute path under the source store made relative to it."""
        if isinstance(value, dict):
            return {k: self._relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._relative(v) for v in value]
        if isinstance(value, str) and value.startswith("/") and Path(value).resolve().is_relative_to(self.root):
            return Path(value).resolve().relative_to(self.root).as_posix()
        return value

    def __call__(self, row: dict) -> dict:
        old = json.loads(row["metadata"]) if row.get("metadata") else None
        meta = self._relative(old)
        if meta != old:
            row = {**row, "metadata": _dumps(meta)}
        return self._path(row, meta)

    def _path(self, row: dict, meta: dict | None) -> dict:
        path = row["path"]
        if path is None or "://" in str(path):
            return row
        p = Path(path)
        if row["kind"] == "dataset" and meta and meta.get("dataset_version") and p.is_file() \
                and (p.parent / "manifest.json").is_file():
            d = self.dataset(p.parent)
            meta = {**meta, "tree": d["published"]["uri"], "manifest": d["published"]["manifest"]}
            return {**row, "path": remote.split_uri(d["published"], self.ctx, p), "metadata": _dumps(meta)}
        if row["kind"] in SOURCE_KINDS:
            return {**row, "path": remote.portable_path(path, self.ctx)}
        if p.is_absolute() and not p.exists():
            self.missing.append(f"{row['uri']} {row['version']}: {path}")
            log.warning("%s version %s names %s, which is gone: its row keeps no path", row["uri"],
                        row["version"], path)
        return {**row, "path": self.publish(path)}

    def rows(self, table: str, cols: list[str], rows: list[tuple]) -> list[tuple]:
        """The rows of ``table`` as the target holds them (only ``artifacts`` changes)."""
        if table != "artifacts":
            return rows
        out = [self(dict(zip(cols, r))) for r in rows]
        return [tuple(row[c] for c in cols) for row in out]


def _current_datasets(source: Catalog, name: str) -> dict[str, dict]:
    """Per domain, the latest ``dataset://<name>/<domain>/train`` row (what a local ``load_prepared`` reads)."""
    uris = [r[0] for r in source._query("SELECT DISTINCT uri FROM artifacts WHERE uri LIKE ?",
                                        [f"dataset://{name}/%/train"])]
    return {u.split("/")[-2]: source.latest(u) for u in sorted(uris)}


def _write_pointers(ctx: StoreContext, rewriter: _RowRewriter, source: Catalog) -> dict[str, list[str]]:
    """Last: each domain's current dataset version, each training run, each routing folder."""
    store, out = rewriter.store, {"dataset": [], "training": [], "routing": []}
    for domain, art in _current_datasets(source, ctx.name).items():
        folder = Path(art["path"]).parent if art.get("path") else None
        if folder is None or not (folder / "manifest.json").is_file():
            log.warning("dataset %s/%s: %s is gone; no pointer", ctx.name, domain, folder)
            continue
        d = rewriter.dataset(folder)
        remote.write_dataset_pointer(store, ctx, d["prepared"], d["published"])
        out["dataset"].append(domain)
    for current in sorted((ctx.store / "training").glob("*/current.json")):
        if publish_run(ctx, current.parent.name):
            out["training"].append(current.parent.name)
    for result in sorted((ctx.store / "routing").glob(f"*/{RESULT_FILE}")):
        run = result.parent.name
        files = [f for f in routing_dir(ctx, run).rglob("*") if f.is_file() and not f.name.startswith(".")]
        publish_pointer(ctx, ROUTING_KIND, run, files, key=json.loads(result.read_text())["key"])
        out["routing"].append(run)
    return out


def migrate_store(source: StoreContext, target: StoreContext, files: bool = True) -> dict:
    """Copy a local store and its DuckDB catalog into ``target``'s object store and PostgreSQL catalog.

    Args:
        source: The profile's context with a local ``artifact_root`` (its ``catalog.duckdb`` is read).
        target: The same profile's context with a URL ``artifact_root`` and a ``catalog_url``.
        files: Publish the files and rewrite the rows' paths (False: copy the rows as they are, the
            ``catalog migrate`` of a profile that stays on one machine's folder).

    Returns:
        ``{"tables": migrate_catalog's report, "pointers": {kind: [names]}, "missing": [rows whose file
        is gone], "url": the store URL}``.

    Raises:
        ValueError: ``source`` is already a URL store, or ``target`` is not one (or has no PostgreSQL catalog).
        FileNotFoundError: No DuckDB catalog in the source folder.
    """
    if source.remote is not None:
        raise ValueError(f"store migrate: the source profile {source.name} is already a URL store")
    if target.remote is None or target.catalog_url is None:
        raise ValueError("store migrate: the target needs an artifact_root URL (--store-to s3://...) and a "
                         "postgresql:// catalog (--to)")
    ctx = target.model_copy(update={"store": source.store})  # source files, target store: source path -> token
    store = blob_store(ctx)
    store.check()
    target_cat = Catalog(ctx.catalog_path, url=target.catalog_url.get_secret_value(),
                         pg_schema=_schema(target.name))
    rewriter = _RowRewriter(ctx)
    tables = migrate_catalog(source.catalog_path, target_cat, rewrite=rewriter.rows if files else None)
    pointers = _write_pointers(ctx, rewriter, Catalog(source.catalog_path)) if files else {}
    log.info("migrated %s into %s: %s pointers", source.store, store.url,
             {k: len(v) for k, v in pointers.items()})
    return {"tables": tables, "pointers": pointers, "missing": rewriter.missing, "url": store.url}


def _schema(name: str) -> str:
    from brainstacks_core.lineage.pg_backend import schema_name

    return schema_name(name)
