"""Stage boundaries of an object-store profile: publish a stage's immutable files, materialise a stage's inputs.

When ``artifact_root`` is a URL, a worker's ``ctx.store`` is a local working copy in its
cache folder (:attr:`~brainstacks_core.lineage.storage_config.RemoteStore.work_root`).
After a stage, the files it wrote once (a dataset version's splits and manifest, a
training run's stack files, a router) are published as a *tree*: every file a blob, then
one JSON blob listing ``relative path -> sha256, size``. The stage then records its catalog
rows naming blob URIs (never host paths), and last moves the pointer. Before a stage, the
tree its input names is materialised into the local working copy at the same relative
paths, each file verified by sha256; files already there and intact are kept.

A tree is itself content-addressed, so publishing an unchanged folder again writes nothing
and returns the same URI::

    tree = publish_tree(store, ctx.store, [folder / "train.parquet", folder / "manifest.json"])
    tree["uri"]  # s3://bucket/prefix/blobs/sha256/3f/3f...
    materialise_tree(store, tree["uri"], other_ctx.store)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from brainstacks_core.files import atomic_write_bytes, sha256_bytes, sha256_file
from brainstacks_core.lineage.blob_store import BlobIntegrityError, BlobStore
from brainstacks_core.lineage.context import StoreContext

log = logging.getLogger(__name__)

TREE_FORMAT = "brainstacks.tree/1"
STORE_TOKEN = "@brainstacks-store@"
"""Stands for the working copy's absolute path inside published text files (``portable=True``)."""
TEXT_SUFFIXES = (".json", ".jsonl", ".md")


def _portable_bytes(f: Path, root: Path) -> bytes | None:
    """A text file's bytes with the working copy's path replaced by :data:`STORE_TOKEN` (None: unchanged)."""
    if f.suffix not in TEXT_SUFFIXES:
        return None
    data = f.read_bytes()
    out = data
    for r in {str(root), str(Path(root).resolve())}:
        out = out.replace(r.encode("utf-8"), STORE_TOKEN.encode("utf-8"))
    return out if out != data else None


def blob_store(ctx: StoreContext) -> BlobStore | None:
    """The object store of a context whose ``artifact_root`` is a URL; None for a local folder."""
    if ctx.remote is None:
        return None
    hint = f"brainstacks repair --config {ctx.source_path}" if ctx.source_path else "brainstacks repair"
    return BlobStore(ctx.remote, repair_hint=hint)


def put_file(store: BlobStore, f: Path, root: Path, portable: bool = True) -> str:
    """Publish one file as a blob; a text file of the working copy without its host path (``portable``)."""
    body = _portable_bytes(Path(f), Path(root)) if portable else None
    return store.put(f) if body is None else store.put_bytes(body)


def publish_tree(store: BlobStore, root: Path, files: Iterable[Path], portable: bool = False,
                 force: bool = False, overrides: dict[Path, bytes] | None = None) -> dict:
    """Upload ``files`` (under ``root``) as blobs, then the tree JSON naming them.

    Args:
        store: The object store.
        root: The working copy the relative paths are taken from (``ctx.store``).
        files: The files to publish; each must be under ``root``.
        portable: Text files (JSON, JSONL, markdown) are published with ``root``'s absolute path
            replaced by :data:`STORE_TOKEN` (training manifests name their stack files by absolute
            path): no host path leaves the worker; :func:`materialise_tree` puts the reader's own back.
        force: Upload every file again, even when its blob exists (repair of a corrupt object).
        overrides: Bytes to publish for some of ``files`` instead of what they hold on disk (a store
            migration publishes a local manifest in the form an object-store profile writes it).

    Returns:
        ``{"uri": <tree blob URI>, "sha256": <tree sha256>, "files": {rel: {"sha256", "size", "uri"}}}``.
    """
    entries = {}
    for f in sorted({Path(f) for f in files}):
        rel = f.resolve().relative_to(Path(root).resolve()).as_posix()
        body = (overrides or {}).get(f)
        body = _portable_bytes(f, Path(root)) if body is None and portable else body
        if body is None:
            sha = sha256_file(f)
            entries[rel] = {"sha256": sha, "size": f.stat().st_size, "uri": store.put(f, sha, force=force)}
        else:
            entries[rel] = {"sha256": sha256_bytes(body), "size": len(body), "uri": store.put_bytes(body, force),
                            "portable": True}
    body = json.dumps({"format": TREE_FORMAT, "files": entries}, indent=2, sort_keys=True).encode("utf-8")
    uri = store.put_bytes(body)
    return {"uri": uri, "sha256": store.sha_of(uri), "files": entries}


def read_tree(store: BlobStore, tree_uri: str) -> dict:
    """The verified tree JSON a URI names."""
    tree = json.loads(store.read_bytes(tree_uri))
    if tree.get("format") != TREE_FORMAT:
        raise BlobIntegrityError(f"{tree_uri} is not a brainstacks tree (format {tree.get('format')!r})")
    return tree


def materialise_tree(store: BlobStore, tree_uri: str, root: Path, tolerant: bool = False) -> dict:
    """Write every file of a tree under ``root`` (its relative paths), each verified by sha256.

    A file already there with the right sha256 is kept; any other is replaced atomically.
    ``tolerant`` (``brainstacks repair``): a blob that fails its check is logged and left out
    (the repair then sees the file missing) instead of raising :class:`BlobIntegrityError`.

    Returns:
        The tree's ``files`` mapping.
    """
    tree = read_tree(store, tree_uri)
    fetched = 0
    for rel, entry in tree["files"].items():
        dest = Path(root) / rel
        if entry.get("portable"):  # the reader's own working-copy path back in place of the token
            body = store.read_bytes(entry["sha256"]).replace(STORE_TOKEN.encode("utf-8"),
                                                             str(Path(root).resolve()).encode("utf-8"))
            if not (dest.is_file() and dest.read_bytes() == body):
                atomic_write_bytes(dest, body)
                fetched += 1
            continue
        if dest.is_file() and sha256_file(dest) == entry["sha256"]:
            continue
        try:
            store.get(entry["sha256"], dest)
        except (BlobIntegrityError, FileNotFoundError) as exc:
            if not tolerant:
                raise
            log.warning("left out %s: %s", rel, exc)
            continue
        fetched += 1
    log.info("materialised %s: %d files (%d fetched) under %s", tree_uri, len(tree["files"]), fetched, root)
    return tree["files"]


def check_store(ctx: StoreContext) -> None:
    """Before a stage writes anything: raise ``StoreUnreachableError`` (naming the URL and the setting)
    unless the context's object store answers; a local folder needs no check."""
    store = blob_store(ctx)
    if store is not None:
        store.check()


def publish_pointer(ctx: StoreContext, kind: str, name: str, files: Iterable[Path], force: bool = False,
                    **target) -> str | None:
    """Publish ``files`` of the working copy as one portable tree, then move ``pointers/<profile>/<kind>/<name>``
    to it (the last write of a stage); the pointer URI, or None for a local store."""
    store = blob_store(ctx)
    if store is None:
        return None
    tree = publish_tree(store, ctx.store, files, portable=True, force=force)
    uri = store.write_pointer(ctx.name, kind, name, {"tree": tree["uri"], **target})
    log.info("published %s %s/%s (%d files) as %s", kind, ctx.name, name, len(tree["files"]), tree["uri"])
    return uri


def materialise_pointer(ctx: StoreContext, kind: str, name: str, tolerant: bool = False) -> dict | None:
    """Materialise the tree ``pointers/<profile>/<kind>/<name>`` names into the working copy.

    Returns:
        The pointer's target, or None for a local store or a pointer never written.
    """
    store = blob_store(ctx)
    target = store.read_pointer(ctx.name, kind, name) if store is not None else None
    if target is not None:
        materialise_tree(store, target["tree"], ctx.store, tolerant=tolerant)
    return target
