"""``prepare_data`` flow: sources -> clean, decontaminated, split, versioned datasets.

Sequences the tasks of ``tasks.data``; publishes a table artifact of per-domain
counts; ``cli_prepare`` runs it for ``brainstacks prepare`` and prints the table.
"""

from __future__ import annotations

import argparse
import os

# Before prefect is imported (its settings are read once): a loaded CPU box can take
# longer than the default 20 s to start the ephemeral API server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.events import emit_event  # noqa: E402

from brainstacks_core.profile import load_profile  # noqa: E402
from tasks.data import assign_task, finalize_task, ingest_task  # noqa: E402

COLUMNS = ["domain", "version", "in", "moved_in", "moved_out", "quarantined", "dropped_keyword",
           "dropped_benchmark", "dropped_duplicate", "dropped_cap", "train", "val", "cache_hit"]


@flow(name="prepare-data")
def prepare_data(config_path: str, domain: str | None = None, artifact_root: str | None = None) -> dict[str, dict]:
    """Prepare one domain or all domains of a profile.

    Args:
        config_path: Profile YAML.
        domain: One domain (default: all, in curriculum order). Keyword moves
            always consider every domain, so the version is the same either way.
        artifact_root: Override of the profile's artifact root.

    Returns:
        Per-domain counts (and version) by domain.
    """
    profile = load_profile(config_path, artifact_root)
    cfg = profile.data
    if domain is not None and domain not in cfg.domains:
        raise ValueError(f"unknown domain {domain!r}; profile {profile.name!r} has {cfg.domains}")
    ingested = {d: ingest_task(config_path, artifact_root, d) for d in cfg.domains}
    assigned = assign_task(config_path, artifact_root, ingested)
    rows = {d: finalize_task(config_path, artifact_root, d, ingested, assigned) for d in ([domain] if domain else cfg.domains)}
    for d, r in rows.items():  # a new dataset version starts retraining (prefect.yaml trigger)
        if not r.get("cache_hit"):
            emit_event(event="brainstacks.dataset.version.changed",
                       resource={"prefect.resource.id": f"brainstacks.dataset.{profile.name}.{d}",
                                 "brainstacks.profile": profile.name, "brainstacks.domain": d},
                       payload={"version": r.get("version"), "domain": d, "config_path": config_path})
    create_table_artifact(key=f"data-counts-{profile.name}".replace("_", "-").lower(),
                          table=[{c: r.get(c) for c in COLUMNS} for r in rows.values()],
                          description=f"Prepared data of profile {profile.name}: every input row is in train, "
                                      f"val, quarantine or dropped with a reason.")
    return rows


def format_table(rows: dict[str, dict]) -> str:
    """The per-domain counts as a fixed-width text table."""
    cells = [[str(r.get(c, "")) for c in COLUMNS] for r in rows.values()]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(c) for c in cells])


def cli_prepare(args: argparse.Namespace) -> int:
    """``brainstacks prepare --config PATH [--domain D]``: run the flow, print the table."""
    rows = prepare_data(config_path=args.config, domain=getattr(args, "domain", None),
                        artifact_root=getattr(args, "artifact_root", None))
    print(format_table(rows))
    return 0
