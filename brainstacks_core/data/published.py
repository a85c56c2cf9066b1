"""Prepared datasets in an object store: publish a dataset version, materialise it on another worker.

Only used when ``artifact_root`` is a URL (``ctx.remote``). A dataset version's files
(its split parquet files, dropped and moves logs, quarantine file and manifest) are
published as one tree (:func:`brainstacks_core.lineage.store_sync.publish_tree`) before its
catalog rows are recorded; the rows name blob URIs and the tree, never a host path; the
pointer ``pointers/<profile>/dataset/<domain>.json`` moves last. A worker in an empty
folder materialises the version the pointer (or a requested version) names into its own
working copy, each file verified by sha256.
"""

from __future__ import annotations

import logging
from pathlib import Path

from brainstacks_core.data.prepared import PreparedDataset
from brainstacks_core.lineage.blob_store import BlobIntegrityError, BlobStore
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.store_sync import materialise_tree, publish_tree

log = logging.getLogger(__name__)

POINTER_KIND = "dataset"


def portable_path(path: str | Path | None, ctx: StoreContext) -> str | None:
    """A path as it may be stored where many hosts read it: relative to the repository root or the
    store when under either, else only its file name (None stays None)."""
    if path is None:
        return None
    p = Path(path).resolve()
    for root in (ctx.store, ctx.repo_root):
        try:
            return p.relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    return p.name


def dataset_files(p: PreparedDataset) -> list[Path]:
    """Every file of a prepared version: splits, logs, quarantine and the manifest."""
    splits = [p.train_path, p.val_path, p.test_path, p.router_path]
    return [f for f in splits + [p.dropped_path, p.moves_path, p.quarantine_path,
                                 p.train_path.parent / "manifest.json"] if f is not None and f.is_file()]


def publish_dataset(store: BlobStore, ctx: StoreContext, p: PreparedDataset,
                    overrides: dict[Path, bytes] | None = None) -> dict:
    """Publish a prepared version's files as one tree (blobs first; nothing in the catalog yet).

    ``overrides``: bytes to publish instead of some files' own (see
    :func:`~brainstacks_core.lineage.store_sync.publish_tree`).

    Returns:
        ``{"uri": tree URI, "manifest": manifest path relative to the store, "files": {rel: {"uri", ...}}}``.
    """
    tree = publish_tree(store, ctx.store, dataset_files(p), overrides=overrides)
    manifest = (p.train_path.parent / "manifest.json").resolve().relative_to(ctx.store.resolve()).as_posix()
    log.info("%s: dataset %s published as %s", p.domain, p.version, tree["uri"])
    return {**tree, "manifest": manifest}


def split_uri(published: dict, ctx: StoreContext, path: Path) -> str:
    """The blob URI of one published file (a split parquet file) of :func:`publish_dataset`'s tree."""
    return published["files"][path.resolve().relative_to(ctx.store.resolve()).as_posix()]["uri"]


def write_dataset_pointer(store: BlobStore, ctx: StoreContext, p: PreparedDataset, published: dict) -> str:
    """Move ``pointers/<profile>/dataset/<domain>.json`` to this version (after its catalog rows)."""
    return store.write_pointer(ctx.name, POINTER_KIND, p.domain,
                               {"version": p.train_uri_version, "dataset_version": p.version,
                                "tree": published["uri"], "manifest": published["manifest"]})


def materialise_dataset(store: BlobStore, ctx: StoreContext, art: dict) -> Path:
    """Fetch the tree a dataset's catalog row names into ``ctx.store``; return the local manifest path.

    Raises:
        LookupError: The row names no tree (recorded by a worker without the object store).
    """
    meta = art.get("metadata") or {}
    if not meta.get("tree"):
        raise LookupError(f"{art['uri']} version {art['version']} was recorded without the object store "
                          f"(path {art.get('path')}); prepare it again with artifact_root {store.url}")
    if art.get("sha256") and "://" in str(art.get("path")) and store.sha_of(art["path"]) != art["sha256"]:
        raise BlobIntegrityError(f"{art['uri']} version {art['version']}: its catalog row says sha256 "
                                 f"{art['sha256']} but names blob {art['path']}; refused. Repair: prepare again "
                                 f"(brainstacks prepare --config {ctx.source_path}) on a worker with the data")
    materialise_tree(store, meta["tree"], ctx.store)
    return ctx.store / meta["manifest"]
