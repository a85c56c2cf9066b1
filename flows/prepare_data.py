"""``prepare_data`` flow: sources -> clean, decontaminated, split, versioned datasets.

Sequences the tasks of ``tasks.data``: ingest every domain, keyword decontamination
over all of them, finalize each requested domain, then register them all at once
(a failure anywhere registers nothing). A ``brainstacks.data.changed`` event is
emitted once per preparation, listing every domain whose version differs from the one
registered before (one retraining per preparation, not one per domain).
``cli_prepare`` runs it for ``brainstacks prepare`` and prints, per domain, the
counts, the quarantine file with its most common reasons, and the moves' evidence.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before prefect is imported (its settings are read once): a loaded CPU box can take
# longer than the default 20 s to start the ephemeral API server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.events import emit_event  # noqa: E402

from brainstacks_core.data.sources import check_sources  # noqa: E402
from brainstacks_core.data.watch import move_partners  # noqa: E402
from brainstacks_core.lineage.store_sync import check_store  # noqa: E402
from brainstacks_core.profile import load_profile  # noqa: E402
from flows.params import ALL_DOMAINS, DomainNames, DomainOrAll, ProfilePath  # noqa: E402
from tasks.data import PERMANENT_ERRORS, assign_task, finalize_task, ingest_task, register_task  # noqa: E402
from tasks.lineage import data_inputs, lineage_hooks  # noqa: E402

COLUMNS = ["domain", "version", "in", "kept", "moved_in", "moved_out", "quarantined", "dropped", "flagged",
           "train", "val", "test", "router", "new_version"]


@flow(name="prepare-data", **lineage_hooks(data_inputs))
def prepare_data(config_path: ProfilePath = "configs/demo.yaml", domain: DomainOrAll = ALL_DOMAINS,
                 artifact_root: str | None = None, domains: DomainNames = (),
                 announce: bool = True) -> dict[str, dict]:
    """Prepare one domain, some domains or all domains of a profile.

    Args:
        config_path: Profile YAML (one of configs/*.yaml, relative to the checkout the worker runs in,
            BRAINSTACKS_HOME).
        domain: One domain of the profile, or all (every domain, in curriculum order). Keyword moves
            always consider every domain, so the version is the same either way.
        artifact_root: Override of the profile's artifact_root (empty: the profile's).
        domains: Several domains (what the watch-sources flow passes: the changed ones), plus the domains
            that receive rows moved out of them; overrides domain (empty: domain decides).
        announce: Emit the brainstacks.data.changed event when a version changed (it starts the profile's
            retrain-on-data-change deployment). The pipeline turns it off: it trains next itself, so a
            second, competing retraining would only publish its artifacts twice.

    Returns:
        Per-domain counts, version, paths and report by domain.
    """
    profile = load_profile(config_path, artifact_root)
    check_store(profile.context)  # an unreachable object store: one clear error before anything is written
    cfg = profile.data
    one = [domain] if domain and domain != ALL_DOMAINS else list(cfg.domains)
    wanted = list(domains) if domains else one
    unknown = [d for d in wanted if d not in cfg.domains]
    if unknown:
        raise ValueError(f"unknown domain {unknown[0]!r}; profile {profile.name!r} has {cfg.domains}")
    ingested = {d: ingest_task(profile, d) for d in cfg.domains}
    assigned = assign_task(profile, ingested)
    if domains:  # rows moved out of the requested domains change the domains they moved to
        wanted += move_partners(Path(assigned["folder"]), wanted, cfg.domains)
    finalized = {d: finalize_task(profile, d, ingested, assigned) for d in cfg.domains if d in wanted}
    rows = register_task(profile, finalized)
    if announce:
        emit_data_changed(profile.name, config_path, rows)
    create_table_artifact(key=f"data-counts-{profile.name}".replace("_", "-").lower(),
                          table=[_artifact_cells(r) for r in rows.values()],
                          description=f"Prepared data of profile {profile.name}: every input row is in a split "
                                      f"(train/val/test/router), quarantine, moved out, or dropped with a reason.")
    return rows


def emit_data_changed(profile_name: str, config_path: str, rows: dict[str, dict]):
    """ONE ``brainstacks.data.changed`` event per preparation, listing every changed domain (debounce).

    The retraining trigger (prefect.yaml) starts one run per event, so a preparation
    that changes five domains starts one retraining, not five. Returns the event or None.
    """
    changed = {d: r.get("version") for d, r in rows.items() if r.get("new_version")}
    if not changed:
        return None
    return emit_event(event="brainstacks.data.changed",
                      resource={"prefect.resource.id": f"brainstacks.profile.{profile_name}",
                                "brainstacks.profile": profile_name},
                      payload={"domains": list(changed), "versions": changed, "config_path": config_path})


def _cells(r: dict) -> dict:
    out = {c: r.get(c) for c in COLUMNS}
    out["kept"] = sum(int(r.get(s) or 0) for s in ("train", "val", "test", "router"))
    out["dropped"] = sum(int(v or 0) for k, v in r.items() if k.startswith("dropped_"))
    return out


def _artifact_cells(r: dict) -> dict:
    """The table's cells plus the dropped rows per reason (benchmark, duplicate, keyword, cap) for the UI."""
    return {**_cells(r), **{k: int(v or 0) for k, v in sorted(r.items()) if k.startswith("dropped_")}}


def format_table(rows: dict[str, dict]) -> str:
    """The per-domain counts as a fixed-width text table."""
    cells = [[str(v) for v in _cells(r).values()] for r in rows.values()]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(c) for c in cells])


def format_details(rows: dict[str, dict]) -> str:
    """Per domain: the quarantine file and its most common reasons, moves and flags with their evidence."""
    out = []
    for d, r in rows.items():
        rep = r.get("report") or {}
        out.append(f"{d}:")
        drop = {k[len("dropped_"):]: v for k, v in r.items() if k.startswith("dropped_") and v}
        if drop:
            out.append(f"  dropped: {', '.join(f'{k} {v}' for k, v in drop.items())}")
        if r.get("quarantined"):
            reasons = "; ".join(f"{label} ({n})" for label, n in rep.get("top_reasons", []))
            out.append(f"  quarantined {r['quarantined']} -> {r.get('quarantine_path')}")
            out.append(f"    most common: {reasons}")
        for key, title in (("moves", "moved/dropped by keywords"), ("flagged", "look foreign, kept")):
            ex = rep.get(key) or []
            if ex:
                out.append(f"  {title} (examples; all in {r.get('moves_path')}):")
                out.extend(f"    {m['action']} {m['from_domain']} -> {m['to_domain']}: {m['source_uri']} "
                           f"{m['source_row_key']}  evidence: {m['top_keywords']}" for m in ex)
    return "\n".join(out)


def cli_prepare(args: argparse.Namespace) -> int:
    """``brainstacks prepare --config PATH [--domain D]``: run the flow, print the table and details.

    A source that cannot be read (missing, empty) is one line naming it, exit code 2.
    """
    try:
        profile = load_profile(args.config, getattr(args, "artifact_root", None))
        check_store(profile.context)
        check_sources(profile.data)
    except PERMANENT_ERRORS as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    try:
        rows = prepare_data(config_path=args.config, domain=getattr(args, "domain", None),
                            artifact_root=getattr(args, "artifact_root", None))
    except PERMANENT_ERRORS as exc:
        print(f"prepare failed, nothing registered: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print()
    print(format_details(rows))
    return 0
