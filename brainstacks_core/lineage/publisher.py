"""What the catalog's ``path`` column holds when ``artifact_root`` is a URL: a URI, never a host path.

:meth:`Catalog.for_context <brainstacks_core.lineage.catalog.Catalog.for_context>` gives a
catalog of an object-store profile a :class:`PathPublisher`; every ``record_artifact``
passes its ``path`` through it *before* the row's transaction, so the blob is in the
store before any row names it (write order: blob, catalog row, pointer):

* a file of the worker's working copy (``ctx.store``): published as a blob, the row
  holds ``s3://bucket/prefix/blobs/sha256/<hh>/<hex>`` (a text file, JSON or markdown, is
  published with the working copy's absolute path replaced by a token, so no host path
  leaves the worker; its blob is named by the sha256 of those portable bytes);
* a folder of the working copy (a base): published as a tree, the row holds the tree's URI;
* a URI already (``s3://...``, ``hf://...``) or a relative path: kept;
* any other host path (a source file in the checkout): made relative to the repository
  root, else only its file name.

Every stage that records an artifact (stacks, null-space bases, bases, routers, reports,
evaluation results) goes through here unchanged: no stage branches on the backend.
"""

from __future__ import annotations

from pathlib import Path

from brainstacks_core.lineage.blob_store import BlobStore
from brainstacks_core.lineage.store_sync import publish_tree, put_file


class PathPublisher:
    """Turn a local artifact path into the URI the shared catalog records (see the module docstring).

    Args:
        store: The object store.
        root: The worker's working copy (``ctx.store``).
        repo_root: The checkout relative source paths are given against.
    """

    def __init__(self, store: BlobStore, root: Path, repo_root: Path) -> None:
        self.store, self.root, self.repo_root = store, Path(root).resolve(), Path(repo_root).resolve()

    def __call__(self, path: str | None) -> str | None:
        if path is None or "://" in str(path):
            return path
        p = Path(path)
        if not p.is_absolute():
            return p.as_posix()
        p = p.resolve()
        if p.is_relative_to(self.root):
            if p.is_file():  # text files (JSON, markdown) with the working copy's path as a token
                return put_file(self.store, p, self.root)
            if p.is_dir():
                files = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
                return publish_tree(self.store, self.root, files, portable=True)["uri"] if files else None
            return None  # named but not written: no host path either
        if p.is_relative_to(self.repo_root):
            return p.relative_to(self.repo_root).as_posix()
        return p.name
