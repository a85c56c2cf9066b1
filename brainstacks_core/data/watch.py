"""Source watchers: which domains of a profile have new raw data, checked cheaply.

What "changed" means per source kind:

* ``local`` file: its size or mtime differs from the last check; only then is the
  file hashed (sha256), and it is changed only when the hash differs (a ``touch``
  costs one stat and one hash, never a preparation).
* ``hf`` with ``track: <branch>``: the branch's latest commit (one small hub API
  call, with a timeout) differs from the last one seen. Offline or failing: a
  warning, and the source counts as unchanged.
* ``hf`` at a pinned ``revision``: never changes (a new revision is a profile edit).
* ``generated``: deterministic from the profile, never changes by itself.

A profile edit of the data section (a new source, lexicon, split share) changes the
section's hash, and every domain counts as changed. A source never seen before (no
state yet) counts as changed: the first check prepares, and preparation is
idempotent (same content, same version, no event).

State: one small JSON per profile, ``<store>/watch/sources.json`` (a few hundred
bytes per source), written atomically. :func:`check_sources` does not write it;
:func:`commit_state` does, after the preparation succeeded, so a failed preparation
is tried again at the next check.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from brainstacks_core.data.config import DataConfig, SourceConfig
from brainstacks_core.files import atomic_write_json, sha256_file
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.versioning import content_hash

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 10.0


@dataclass
class WatchResult:
    """What one check found.

    Attributes:
        changed: Changed domains, in curriculum order.
        reasons: Per changed domain, one line per changed source (what differed).
        state: The state to commit once the changed domains are prepared.
        state_path: Where :func:`commit_state` writes it.
    """

    changed: list[str]
    reasons: dict[str, list[str]]
    state: dict = field(repr=False)
    state_path: Path


def state_path(ctx: StoreContext) -> Path:
    """``<store>/watch/sources.json``."""
    return ctx.store / "watch" / "sources.json"


def load_state(path: Path) -> dict:
    """The last committed state, or an empty one (missing or unreadable file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def latest_commit(repo: str, branch: str, timeout_s: float = HUB_TIMEOUT_S) -> str | None:
    """The latest commit sha of a hub dataset's branch, or None when the hub cannot answer.

    Uses ``HfApi().dataset_info(repo, revision=branch, timeout=...)`` (one request).
    ``HF_HUB_OFFLINE=1`` answers None at once.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        log.warning("watch: HF_HUB_OFFLINE=1: cannot check %s@%s; treated as unchanged", repo, branch)
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo, revision=branch, timeout=timeout_s).sha
    except Exception as exc:  # noqa: BLE001 - offline, timeout, 404: all mean "cannot tell"
        log.warning("watch: cannot reach the hub for %s@%s (%s); treated as unchanged", repo, branch, exc)
        return None


def tracked_revision(spec: SourceConfig, store: Path) -> str:
    """The commit a tracked hub source is read at: the branch head, else the last one seen, else ``revision``.

    Raises:
        ValueError: the hub cannot answer and no commit was ever seen or pinned.
    """
    sha = latest_commit(spec.repo, spec.track)
    if sha:
        return sha
    key = _hf_key(spec)
    for entry in load_state(store / "watch" / "sources.json").get("sources", {}).values():
        if entry.get("hub") == key and entry.get("commit"):
            return entry["commit"]
    if spec.revision:
        return spec.revision
    raise ValueError(f"hf source {spec.repo} tracks {spec.track!r} but the hub cannot be reached and no commit "
                     f"was seen before: pin a `revision` or run when online")


def _hf_key(spec: SourceConfig) -> str:
    return f"{spec.repo}/{spec.config or 'default'}/{spec.split}@{spec.track}"


def _check_local(path: Path, old: dict | None) -> tuple[bool, dict, str]:
    """(changed, new entry, reason): stat first, hash only when size or mtime moved."""
    st = path.stat()
    entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns and old.get("sha256"):
        return False, {**entry, "sha256": old["sha256"]}, ""
    entry["sha256"] = sha256_file(path)
    if old and old.get("sha256") == entry["sha256"]:
        return False, entry, ""
    return True, entry, ("first check" if not old else
                         f"sha256 {str(old.get('sha256'))[:12]} -> {entry['sha256'][:12]} "
                         f"({old.get('size')} -> {st.st_size} bytes)")


def _check_source(spec: SourceConfig, cfg: DataConfig, old: dict | None) -> tuple[bool, dict, str]:
    if spec.kind == "local":
        path = cfg.resolve(spec.path)
        if not path.is_file():
            log.warning("watch: local source %s is missing (%s); treated as unchanged", spec.path, path)
            return False, old or {}, ""
        return _check_local(path, old)
    if spec.kind == "hf" and spec.track:
        sha = latest_commit(spec.repo, spec.track)
        if sha is None:
            return False, old or {"hub": _hf_key(spec)}, ""
        entry = {"hub": _hf_key(spec), "commit": sha}
        if old and old.get("commit") == sha:
            return False, entry, ""
        return True, entry, f"{spec.repo}@{spec.track}: " + (f"{old['commit'][:12]} -> {sha[:12]}"
                                                             if old and old.get("commit") else f"at {sha[:12]}")
    entry = {"fixed": spec.revision or spec.generator}  # pinned hub revision or generator: changes with the profile
    return (old is None), entry, ("first check" if old is None else "")


def check_sources(ctx: StoreContext, cfg: DataConfig) -> WatchResult:
    """Check every source of the profile's ``data:`` section; nothing is written (see :func:`commit_state`).

    Cost: one ``stat`` per local file (a sha256 only when size or mtime moved), one
    hub request per tracked hub source, nothing for pinned or generated sources.

    Returns:
        The changed domains (curriculum order of ``data.domains``) and why.
    """
    path = state_path(ctx)
    old = load_state(path)
    section = content_hash(cfg.model_dump(mode="json"))
    old_sources = old.get("sources", {})
    new_sources: dict[str, dict] = {}
    reasons: dict[str, list[str]] = {}
    for domain in cfg.domains:
        for spec in cfg.sources[domain]:
            key = f"{domain}|{content_hash(spec.model_dump(mode='json'))}"
            changed, entry, why = _check_source(spec, cfg, old_sources.get(key))
            new_sources[key] = entry
            if changed:
                reasons.setdefault(domain, []).append(f"{spec.kind} {spec.path or spec.repo or spec.generator}: "
                                                      f"{why}")
    if old and old.get("data_config") != section:
        for domain in cfg.domains:
            reasons.setdefault(domain, []).append("the profile's data section changed")
    changed = [d for d in cfg.domains if d in reasons]
    for d in changed:
        log.info("watch %s: %s changed: %s", ctx.name, d, "; ".join(reasons[d]))
    if not changed:
        log.info("watch %s: no source changed (%d checked)", ctx.name, len(new_sources))
    return WatchResult(changed=changed, reasons=reasons, state={"data_config": section, "sources": new_sources},
                       state_path=path)


def move_partners(assign_folder: Path, domains: list[str], order: list[str]) -> list[str]:
    """Domains outside ``domains`` that receive rows moved out of them by keyword decontamination.

    Their datasets change with the changed domains' sources, so a preparation of only
    the changed domains must write them too. Reads two columns of the assignment's
    ``moves.parquet`` (one row per moved record).

    Args:
        assign_folder: the folder of ``pipeline.assign_domains``' result (its ``folder``).
        domains: the changed domains.
        order: every domain of the profile (the order of the answer).
    """
    import pandas as pd

    path = Path(assign_folder) / "moves.parquet"
    if not path.is_file():
        return []
    moves = pd.read_parquet(path, columns=["from_domain", "to_domain"])
    hit = set(moves.loc[moves["from_domain"].isin(domains), "to_domain"])
    return [d for d in order if d in hit and d not in domains]


def commit_state(result: WatchResult) -> Path:
    """Write the state of a check (after the changed domains were prepared), atomically."""
    result.state_path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(result.state_path, result.state)
