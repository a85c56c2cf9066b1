"""``brainstacks audit``: answer lineage questions from the DuckDB catalog (no Prefect run)."""

from __future__ import annotations

import argparse

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile


def _fmt(a: dict, depth: bool = True) -> str:
    d = f"{a.get('depth', ''):>3}  " if depth else ""
    extra = f"  row {a['source_row_key']}" if a.get("source_row_key") else ""
    return f"{d}{a['kind']:<9} {a['uri']}  @ {a['version']}  code {a['code_version']}{extra}"


def cli_audit(args: argparse.Namespace) -> int:
    """``--artifact X`` prints everything upstream of X, ``--record R`` every artifact holding R,
    ``--list`` every artifact."""
    profile = load_profile(args.config, getattr(args, "artifact_root", None))
    cat = Catalog(profile.catalog_path)
    if getattr(args, "list", False):
        arts = cat.list_artifacts()
        print("\n".join(_fmt(a, depth=False) for a in arts) or f"catalog {profile.catalog_path} is empty")
        return 0
    if getattr(args, "artifact", None):
        art = cat.get(args.artifact)
        if art is None:
            print(f"no artifact {args.artifact!r} in {profile.catalog_path}")
            return 1
        print(_fmt(art, depth=False))
        for a in cat.upstream(art["version"]):
            print(_fmt(a))
        return 0
    found = cat.artifacts_containing(args.record)
    if not found:
        print(f"record {args.record!r} is in no artifact of {profile.catalog_path}")
        return 1
    for a in found:
        print(_fmt(a))
    return 0
