"""What the routing of one trained run reads, and where it lives: no model, no training.

The run's pointer and manifest (:func:`run_pointer`), the oracle's prompts
(:func:`oracle_pairs`: router splits plus cross-domain rows) and the routed
evaluation's test rows (:func:`routed_test_rows`), the routing folder and its result
file, and the key that says whether the last routing is still current
(:func:`routing_key`, :func:`routing_is_current`). Shared by the one-process routing
(:mod:`brainstacks_core.routing.run`) and the oracle shards
(:mod:`brainstacks_core.routing.oracle_shards`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.store_sync import materialise_pointer
from brainstacks_core.lineage.versioning import code_version, content_hash
from brainstacks_core.routing.config import RoutingSetup
from brainstacks_core.routing.cross_pairs import cross_domain_rows
from brainstacks_core.routing.oracle import router_pairs
from brainstacks_core.routing.pair_loss import answerable


POINTER_KIND = "routing"
"""``pointers/<profile>/routing/<run>.json``: the routing folder (router, oracle targets, report) of a run."""


def routing_dir(ctx: StoreContext, run_name: str) -> Path:
    """``<store>/routing/<run>``."""
    return ctx.store / "routing" / run_name


def _test_rows(ctx: StoreContext, domains: list[str], data_versions: dict, catalog,
               rows_per_domain: int | None) -> tuple[pd.DataFrame, list]:
    """Each domain's held-out test split (the numbers the report shows) and their versions."""
    from brainstacks_core.training.run import load_domain_data

    frames, versions = [], []
    for d in load_domain_data(ctx, domains, catalog, data_versions):
        df = d.test if d.test is not None and len(d.test) else d.val
        df = df if rows_per_domain is None else df.head(rows_per_domain)
        frames.append(df.assign(source_domain=d.domain, record_id=df["record_id"].astype(str)))
        versions.append(d.test_version or d.val_version)
    return pd.concat(frames, ignore_index=True), versions


RESULT_FILE = "result.json"
"""In ``<store>/routing/<run>/``: the key of the last routing and what it recorded (:func:`cached_routing`)."""


def routing_key(setup: RoutingSetup, manifest: dict, pointer: dict) -> str:
    """What a routing's results depend on: the router, base, MoE and training sections, the run's base,
    data versions and frozen stack versions, and the code version."""
    stacks = {r["stack_id"]: r["version"] for d in manifest["domains_order"]
              for r in manifest["domains"].get(d, {}).get("rounds", []) if r.get("status") == "frozen"}
    run = setup.run
    return content_hash("routing", code_version(), setup.router, run.base, run.moe, run.training,
                        list(run.curriculum), pointer.get("base"), pointer.get("data"), stacks)


def routing_is_current(setup: RoutingSetup, run_name: str) -> bool:
    """Whether the last routing of ``run_name`` was computed from today's inputs (:func:`routing_key`).

    Cheap (two JSON reads, no hashing, no model): the fan-out asks it before it starts any
    shard; :func:`cached_routing` still verifies every file before the results are reused.
    """
    try:
        materialise_pointer(setup.run.context, POINTER_KIND, run_name)
        pointer, manifest, _ = run_pointer(setup, run_name)
        saved = json.loads((routing_dir(setup.run.context, run_name) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return saved.get("key") == routing_key(setup, manifest, pointer)


def current_run_dir_of(setup: RoutingSetup, run_name: str) -> Path:
    from brainstacks_core.training.run import current_run_dir

    return current_run_dir(setup.run.context, run_name)


def run_pointer(setup: RoutingSetup, run_name: str) -> tuple[dict, dict, dict[str, str]]:
    """The trained run's ``current.json`` pointer, its manifest and ``domain -> data version``."""
    folder = current_run_dir_of(setup, run_name)
    pointer = json.loads((folder.parent / "current.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    return pointer, manifest, {d: v[0] for d, v in pointer.get("data", {}).items()}


def oracle_pairs(setup: RoutingSetup, domains: list[str], catalog, data_versions: dict[str, str]) -> pd.DataFrame:
    """The oracle's prompts: the trained domains' router splits plus the cross-domain rows (paper 5.4)."""
    cfg = setup.router
    pairs = router_pairs(setup.run.context, list(setup.run.curriculum), catalog, data_versions)
    pairs = pairs[pairs["source_domain"].isin(domains)].reset_index(drop=True)
    if cfg.cross_domain_pairs:  # paper 5.4 (router v2): prompts that need two domains' stacks
        cross = cross_domain_rows(pairs, cfg.cross_domain_pairs, cfg.cross_domain_rows, cfg.seed, domains)
        pairs = pd.concat([pairs, cross], ignore_index=True)
    return pairs


def routed_test_rows(setup: RoutingSetup, domains: list[str], catalog, data_versions: dict[str, str],
                     tokenizer) -> tuple[pd.DataFrame, list[str]]:
    """The trained domains' answerable test rows (routed evaluation) and their split versions."""
    test, versions = _test_rows(setup.run.context, list(setup.run.curriculum), data_versions, catalog,
                                setup.run.training.eval_rows)
    test = test[test["source_domain"].isin(domains)].reset_index(drop=True)
    return test[answerable(tokenizer, test, setup.router.max_length)].reset_index(drop=True), versions
