"""Retrain only what is stale: seed a new run folder with the unchanged domains of an older one.

A domain's stacks depend on the base, the run's settings, its own data and the
stacks (hence data) of every domain before it in the curriculum. ``run.domain_keys``
chains exactly that into one key per domain; a domain whose key matches a finished
domain of another folder of the same run is not retrained: its stack files and
null-space basis are hard-linked into the new folder (a copy across file systems)
and its manifest entry and forgetting rows are copied, so a change in domain k
retrains k and the domains after it only. With an object store (``reference=True``) nothing
is linked: the new manifest names the older folder's stack files, which are blobs already.

Idempotent: a folder that already has a manifest is left as it is, links that
exist with the right content are kept, and the manifest is written last
(atomically), so a crash while seeding leaves a folder that seeds again.
Nothing is held in memory beyond one manifest (a few KB).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from brainstacks_core.files import atomic_write_json, sha256_file

log = logging.getLogger(__name__)


def _manifests(parent: Path, exclude: Path) -> list[tuple[Path, dict]]:
    out = []
    for mpath in sorted(parent.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        if mpath.parent.resolve() == exclude.resolve():
            continue
        try:
            out.append((mpath.parent, json.loads(mpath.read_text())))
        except (OSError, ValueError):
            continue
    return out


def reusable_prefix(manifest: dict, order: list[str], keys: dict[str, str]) -> list[str]:
    """The leading domains of ``order`` that ``manifest`` finished under the same chained keys."""
    out = []
    for d in order:
        e = manifest.get("domains", {}).get(d)
        if not e or e.get("status") != "done" or e.get("chain_key") != keys.get(d):
            break
        out.append(d)
    return out


def find_reusable(parent: Path, new_dir: Path, order: list[str], keys: dict[str, str]) -> tuple[Path | None, list[str]]:
    """The sibling folder under ``parent`` with the longest reusable prefix, and that prefix."""
    best: tuple[Path | None, list[str]] = (None, [])
    for folder, m in _manifests(parent, new_dir):
        prefix = reusable_prefix(m, order, keys)
        if len(prefix) > len(best[1]):
            best = (folder, prefix)
    return best


def _link(src: Path, dst: Path, sha: str | None) -> None:
    """Hard-link ``src`` to ``dst`` (copy across devices); keep a ``dst`` that already matches."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if sha is None or sha256_file(dst) == sha:
            return
        dst.unlink()
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def seed_run(new_dir: Path, order: list[str], keys: dict[str, str], base_fingerprint: str, cfg_hash: str,
             profile: str, run_name: str, reference: bool = False) -> list[str]:
    """Link the longest reusable prefix of another folder of the run into ``new_dir``.

    Args:
        new_dir: the run folder about to be trained (``<store>/training/<run>/<key>``).
        order: the curriculum.
        keys: chained key per domain (``run.domain_keys``).
        base_fingerprint: the base of the run (must match the source manifest).
        cfg_hash: ``continual.run_config_hash`` of the run.
        profile: profile name (manifest field).
        run_name: run name (manifest field).
        reference: keep the reused stack files where they are and name them from the new manifest
            (``reused_from``) instead of linking them in (an object store: a file is a blob, published
            once; ``training.published_run`` publishes the referenced files with the run).

    Returns:
        The reused domains (empty when nothing matched or ``new_dir`` already has a manifest).
    """
    if (new_dir / "manifest.json").exists():
        return []
    src, prefix = find_reusable(new_dir.parent, new_dir, order, keys)
    if not prefix:
        return []
    m = json.loads((src / "manifest.json").read_text())
    if m.get("base_fingerprint") != base_fingerprint or m.get("config_hash") != cfg_hash:
        return []
    domains = {}
    for d in prefix:
        e = json.loads(json.dumps(m["domains"][d]))
        for r in e["rounds"]:
            if r.get("file") and not reference:
                dst = new_dir / Path(r["file"]).relative_to(src)
                _link(Path(r["file"]), dst, r.get("file_sha256"))
                r["file"] = str(dst)
        ns = e.get("null_space")
        if ns and Path(ns["file"]).exists() and not reference:
            dst = new_dir / Path(ns["file"]).relative_to(src)
            _link(Path(ns["file"]), dst, None)
            ns["file"] = str(dst)
        e["reused_from"] = str(src)
        domains[d] = e
    manifest = {"profile": profile, "run": run_name, "base_fingerprint": base_fingerprint, "config_hash": cfg_hash,
                "domains_order": order, "domains": domains,
                "forgetting": [r for r in m.get("forgetting", []) if r["after"] in prefix],
                "seeded_from": {"dir": str(src), "domains": prefix}}
    atomic_write_json(new_dir / "manifest.json", manifest)
    log.info("reused %s from %s (unchanged base, settings and data); training the rest", prefix, src)
    return prefix
