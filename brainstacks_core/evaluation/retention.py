"""Retention of the evaluation score cache: drop cached requests of models no current run uses.

What belongs here: which artifact versions a profile's current runs still use
(:func:`live_versions`) and :func:`prune_eval_cache`, what ``brainstacks catalog prune``
calls. The rule: a cached request result (``eval_scores``) is kept while every
version its effective model is made of (the base fingerprint, each stack that was on;
for a routing decision, the router version) is one that a current run uses: the
profile's base, every frozen stack in the manifest each run's ``current.json`` points
to, and each run's latest ``router://`` version. A retrained domain therefore
releases the rows of every model that contained its old stacks; rows of unchanged
leading domains (still reused by the new run) stay. Older run folders stay on disk
and auditable in the catalog's artifacts; only their cached scores go.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from brainstacks_core.base.config import BaseConfig
from brainstacks_core.lineage.context import StoreContext

log = logging.getLogger(__name__)


def live_versions(ctx: StoreContext, base: BaseConfig, catalog=None) -> set[str]:
    """Versions the profile's current runs use: base fingerprints, frozen stack versions, latest routers.

    Args:
        ctx: the profile's store context (its store holds the runs).
        base: the profile's base section (its fingerprint is live).
        catalog: its catalog (routers' latest versions), or None.
    """
    from brainstacks_core.routing.router import router_uri
    from brainstacks_core.training.run import base_identity

    live = {v for v in [base_identity(ctx, base)] if v}
    for pointer in sorted((ctx.store / "training").glob("*/current.json")):
        run_name = pointer.parent.name
        current = json.loads(pointer.read_text())
        live.add(current.get("base", ""))
        manifest_path = Path(current["dir"]) / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            live.add(manifest.get("base_fingerprint", ""))
            live.update(r["version"] for d in manifest["domains"].values() for r in d.get("rounds", [])
                        if r.get("status") == "frozen" and r.get("version"))
        art = catalog.latest(router_uri(ctx.name, run_name)) if catalog is not None else None
        if art is not None:
            live.add(art["version"])
    live.discard("")
    return live


def prune_eval_cache(ctx: StoreContext, base: BaseConfig, catalog, dry_run: bool = True, drop_unattributed: bool = False) -> dict:
    """Prune the catalog's ``eval_scores`` to the models the current runs use (see the module docstring).

    Args:
        ctx: the profile's store context (its store holds the runs).
        base: the profile's base section.
        catalog: its catalog.
        dry_run: count only.
        drop_unattributed: also drop rows written before identities were recorded.

    Returns:
        :meth:`~brainstacks_core.lineage.cache_tables.CacheTables.prune_eval_scores`'s counts, plus
        ``live`` (how many versions are in use).
    """
    live = live_versions(ctx, base, catalog)
    out = catalog.prune_eval_scores(live, dry_run=dry_run, drop_unattributed=drop_unattributed)
    log.info("eval cache prune (%s): %d of %d rows %s (%d of %d models), %d kept",
             "dry run" if dry_run else "applied", out["pruned"], out["rows"],
             "would go" if dry_run else "deleted", out["dead_identities"], out["identities"], out["kept"])
    return {**out, "live": len(live), "drop_unattributed": drop_unattributed}


def format_prune(out: dict) -> str:
    """The counts as the CLI prints them."""
    verb = "would delete" if out["dry_run"] else "deleted"
    kinds = ", ".join(f"{k} {n}" for k, n in out["pruned_by_kind"].items()) or "none"
    lines = [f"eval_scores: {out['rows']} rows; {verb} {out['pruned']} ({kinds}), kept {out['kept']}",
             f"models: {out['identities']} recorded, {out['dead_identities']} no longer used by a current run "
             f"({out['live']} versions in use)"]
    if out["unattributed"]:
        lines.append(f"{out['unattributed']} rows carry no model identity (written before it was recorded): "
                     + ("counted above (--drop-unattributed)" if out.get("drop_unattributed") else
                        "kept (--drop-unattributed removes them)"))
    if out["dry_run"]:
        lines.append("dry run: nothing deleted (run without --dry-run to delete)")
    return "\n".join(lines)
