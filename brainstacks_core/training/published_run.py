"""A training run in an object store: publish the current run folder, materialise it on another worker.

Only when ``artifact_root`` is a URL (``ctx.remote``). At the end of a training call, the
run's current folder (its manifest, frozen stack files, null-space bases, logs), the
stack files it references in older folders of the run (unchanged domains are referenced,
not linked: :func:`brainstacks_core.training.reuse.seed_run` with ``reference=True``) and
``current.json`` are published as one portable tree (no host path inside: see
:func:`~brainstacks_core.lineage.store_sync.publish_tree`); the stacks' catalog rows were
recorded as each one froze (blob first), and the pointer ``pointers/<profile>/training/<run>.json``
moves last. Another worker materialises the tree the pointer names before it resumes,
routes or evaluates the run, so it retrains nothing that is finished.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.store_sync import materialise_pointer, publish_pointer

log = logging.getLogger(__name__)

POINTER_KIND = "training"


def _referenced(manifest: dict, root: Path) -> list[Path]:
    out = []
    for e in manifest.get("domains", {}).values():
        files = [r.get("file") for r in e.get("rounds", [])] + [(e.get("null_space") or {}).get("file")]
        out += [Path(f) for f in files if f and Path(f).is_file() and Path(f).resolve().is_relative_to(root)]
    return out


def publish_run(ctx: StoreContext, run_name: str, force: bool = False) -> str | None:
    """Publish the run's current folder and move its pointer; the pointer URI (None: a local store).

    ``force`` (``brainstacks repair``) uploads every file again, replacing a corrupt object.
    """
    pointer = ctx.store / "training" / run_name / "current.json"
    if ctx.remote is None or not pointer.is_file():
        return None
    current = json.loads(pointer.read_text())
    folder = Path(current["dir"])
    files = [f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")]
    if (folder / "manifest.json").is_file():
        files += _referenced(json.loads((folder / "manifest.json").read_text()), ctx.store.resolve())
    return publish_pointer(ctx, POINTER_KIND, run_name, files + [pointer], force=force, key=current["key"])


def materialise_run(ctx: StoreContext, run_name: str, tolerant: bool = False) -> bool:
    """Fetch the published run the pointer names into ``ctx.store`` (kept where already intact;
    ``tolerant``: a corrupt blob is left out instead of raising, for ``brainstacks repair``).

    Returns:
        True when a published run was materialised; False for a local store or a run never published.
    """
    return materialise_pointer(ctx, POINTER_KIND, run_name, tolerant) is not None
