"""``brainstacks plan``: what a training run would retrain, and why, without training.

For every curriculum domain: ``up to date`` (the run's folder finished it under the
same chained key), ``reuse`` (another folder of the run finished it under the same
key: its stack files are linked, nothing trains) or ``train`` with the reason: its
data version changed (old -> new), an earlier domain changed, the base or the
settings changed, or it never trained. Reads manifests and catalog rows only.
"""

from __future__ import annotations

import json
from pathlib import Path

from brainstacks_core.data.pipeline import load_prepared
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.training.boosting import DomainData
from brainstacks_core.training.config import TrainingSetup
from brainstacks_core.training.continual import run_config_hash
from brainstacks_core.training.reuse import find_reusable
from brainstacks_core.training.run import base_identity, domain_keys, run_dir


def _versions(setup: TrainingSetup, catalog: Catalog | None) -> list[DomainData]:
    out = []
    for d in setup.curriculum:
        p = load_prepared(setup.context, d, catalog)
        out.append(DomainData(d, None, None, p.train_uri_version, p.val_uri_version))
    return out


def plan_run(setup: TrainingSetup, run_name: str = "main", catalog: Catalog | None = None,
             null_space: bool | None = None) -> list[dict]:
    """One row per curriculum domain: ``{"domain", "action", "reason", "data_version"}``."""
    cfg = setup.training if null_space is None else setup.training.model_copy(update={"null_space": null_space})
    data = _versions(setup, catalog)
    fp = base_identity(setup.context, setup.base)
    pointer = setup.context.store / "training" / run_name / "current.json"
    prev = json.loads(pointer.read_text()) if pointer.exists() else None
    if fp is None:
        return [{"domain": d.domain, "action": "train", "reason": "the base is not built yet",
                 "data_version": d.train_version} for d in data]
    cfg_hash = run_config_hash(cfg, setup.moe)
    keys = domain_keys(fp, cfg_hash, data)
    folder = run_dir(setup.context, run_name, keys[data[-1].domain][:12])
    own = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
    src, prefix = find_reusable(folder.parent, folder, list(setup.curriculum), keys)
    rows, changed = [], None
    for d in data:
        e = own.get("domains", {}).get(d.domain, {})
        if e.get("status") == "done" and e.get("chain_key") == keys[d.domain]:
            action, why = "up to date", f"finished in {folder.name}"
        elif not own and d.domain in prefix:
            action, why = "reuse", f"unchanged: stack files linked from {Path(src).name}"
        else:
            action, why = "train", _reason(d, prev, fp, cfg_hash, changed, e)
            changed = changed or d.domain
        rows.append({"domain": d.domain, "action": action, "reason": why, "data_version": d.train_version})
    return rows


def _reason(d: DomainData, prev: dict | None, fp: str, cfg_hash: str, changed: str | None, entry: dict) -> str:
    if entry and entry.get("status") != "done":
        return f"resumes at round {len(entry.get('rounds', [])) + 1} (unfinished)"
    if prev is None:
        return "never trained"
    if prev.get("base") != fp:
        return f"the base changed ({str(prev.get('base'))[:10]} -> {fp[:10]})"
    if prev.get("config_hash") not in (None, cfg_hash):
        return "the training/MoE settings changed"
    old = (prev.get("data") or {}).get(d.domain)
    if old and old[0] != d.train_version:
        return f"its data version changed ({old[0]} -> {d.train_version})"
    if old and old[1] != d.val_version:
        return f"its validation data changed ({old[1]} -> {d.val_version})"
    if changed:
        return f"an earlier domain changed ({changed}): its parents and null-space basis differ"
    return "not trained under these inputs yet"


def format_plan(rows: list[dict]) -> str:
    """The plan as aligned text lines."""
    w = max(len(r["domain"]) for r in rows)
    return "\n".join(f"{r['domain']:<{w}}  {r['action']:<10}  {r['reason']}" for r in rows)
