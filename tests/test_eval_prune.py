"""Pruning the evaluation score cache (issue 19): ``brainstacks catalog prune [--dry-run]``.

A run evaluated, then its math stack retrained and evaluated again: the cache holds rows
of the old math stack's models (ungated, and routed-to-math) that no current run uses.
The prune deletes exactly those (counts printed; a dry run deletes nothing): evaluating
the current run afterwards still scores nothing, evaluating the old model re-scores
exactly the deleted rows. Rows written without a model identity are kept unless asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from eval_helpers import VERSIONS, add_random_stack, stacked
from test_eval_cache import CFG, ROUTER, _requests

from brainstacks_core.evaluation.run import evaluate_model
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile
from brainstacks_core.stacks.inject import remove_stack
from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = {"math": ["math-r1"], "medical": ["medical-r1"]}


def _evaluate(model, tok, profile, catalog, versions):
    return evaluate_model(model, tok, CFG, profile_name=profile.name, run_name="main", store=profile.store,
                          data_dir=profile.store, base_fingerprint="base-fp", stack_versions=versions,
                          domain_stacks=DOMAINS, router=ROUTER, catalog=catalog, progress=False)


def _current_run(profile, versions: dict[str, str]) -> None:
    """What training leaves: ``training/main/current.json`` naming the folder whose manifest holds the stacks."""
    folder = profile.store / "training" / "main" / "k1"
    folder.mkdir(parents=True)
    manifest = {"base_fingerprint": "base-fp", "domains_order": list(DOMAINS), "domains": {
        d: {"status": "done", "rounds": [{"round": 1, "stack_id": s, "status": "frozen", "version": versions[s]}
                                         for s in ids]} for d, ids in DOMAINS.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder.parent / "current.json").write_text(json.dumps({"key": "k1", "dir": str(folder), "base": "base-fp"}))


def _rows(cat: Catalog) -> int:
    return cat._query("SELECT COUNT(*) FROM eval_scores")[0][0]


def test_catalog_prune_deletes_only_rows_of_models_no_current_run_uses(tmp_path, capsys):
    art = tmp_path / "art"
    profile = load_profile(ROOT / "configs/demo.yaml", art)
    cat = Catalog(profile.catalog_path)
    _, model, tok = stacked()
    old_model_versions = dict(VERSIONS)
    _evaluate(model, tok, profile, cat, old_model_versions)
    total, to_math = _requests()
    remove_stack(model, "math-r1")  # math retrains: new weights, new version
    add_random_stack(model, "math-r1", seed=99)
    versions = {**VERSIONS, "math-r1": "v-math-2"}
    _evaluate(model, tok, profile, cat, versions)
    _current_run(profile, versions)
    cat.record_artifact(uri="router://demo/main", version=ROUTER.version, kind="router", path=None, sha256=None,
                        code_version="c", config_hash=None)
    cat.record_eval_scores(pd.DataFrame({"key": ["legacy"], "kind": ["loglikelihood"], "value": ["[0.0, true]"]}))
    before = _rows(cat)
    dead = total + to_math  # the old math stack's ungated rows and its routed-to-math rows

    assert main(["catalog", "prune", "--config", "configs/demo.yaml", "--artifact-root", str(art), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"eval_scores: {before} rows; would delete {dead} (loglikelihood {dead}), kept {before - dead}" in out
    assert "1 rows carry no model identity" in out and "dry run: nothing deleted" in out
    assert _rows(cat) == before

    assert main(["catalog", "prune", "--config", "configs/demo.yaml", "--artifact-root", str(art)]) == 0
    out = capsys.readouterr().out
    assert f"deleted {dead} (loglikelihood {dead}), kept {before - dead}" in out
    assert "2 no longer used by a current run" in out  # ungated and routed-to-math of the old stack
    assert _rows(cat) == before - dead

    again = _evaluate(model, tok, profile, cat, versions)  # the current run: everything still cached
    assert again["computed"] == 0 and again["per_mode"]["routed"]["routes_computed"] == 0

    main(["catalog", "prune", "--config", "configs/demo.yaml", "--artifact-root", str(art), "--drop-unattributed"])
    assert "deleted 1 (loglikelihood 1)" in capsys.readouterr().out and _rows(cat) == before - dead - 1

    remove_stack(model, "math-r1")  # the old model again: exactly the pruned rows are scored afresh
    add_random_stack(model, "math-r1", seed=11)
    old = _evaluate(model, tok, profile, cat, old_model_versions)
    assert {m: c["computed"] for m, c in old["per_mode"].items()} == {"base": 0, "ungated": total,
                                                                      "routed": to_math}
