"""Prefect tasks of the data step: thin wrappers over ``brainstacks_core.data.pipeline``.

Tasks receive the flow's loaded :class:`~brainstacks_core.profile.Profile` (read
once per flow run) and pass stage metadata (small dicts with versions and file
paths), never DataFrames. Each stage is cached in the core by the version key it
computes from its inputs; Prefect's own result cache is off (``NO_CACHE``), so
no parameter (the profile, the stage dicts) is ever hashed or pickled. A failure that
cannot change on retry (an empty or unreadable file, a domain left with no rows)
is not retried.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from brainstacks_core.data.pipeline import (
    EmptyDomainError,
    assign_domains,
    finalize_domain,
    from_manifest,
    ingest_domain,
    register_prepared,
)
from brainstacks_core.data.sources import SourceError
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import Profile
from tasks.run_context import retry_unless, run_ids

# Errors in the data itself: the same input gives the same error, so retrying only repeats it.
PERMANENT_ERRORS = (SourceError, EmptyDomainError, ValueError, FileNotFoundError)


_retry_unless_permanent = retry_unless(*PERMANENT_ERRORS)


def _summary(p) -> dict:  # noqa: ANN001 - PreparedDataset
    return {"domain": p.domain, "version": p.version, "cache_hit": p.cache_hit, "new_version": p.new_version,
            "train_path": str(p.train_path), "val_path": str(p.val_path), "test_path": str(p.test_path),
            "router_path": str(p.router_path), "quarantine_path": str(p.quarantine_path),
            "moves_path": str(p.moves_path), "report": p.report, **p.counts}


@task(name="ingest-domain", retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_permanent,
      cache_policy=NO_CACHE)
def ingest_task(profile: Profile, domain: str) -> dict:
    """Read, normalise, strip and validate one domain's sources (stage 1)."""
    meta = ingest_domain(profile.context, profile.data, domain)
    get_run_logger().info("ingested %s: %d rows in, key %s", domain, meta["n_in"], meta["key"])
    return meta


@task(name="keyword-decontamination", cache_policy=NO_CACHE)
def assign_task(profile: Profile, ingested: dict[str, dict]) -> dict:
    """Cross-domain keyword decontamination over every domain (stage 2)."""
    meta = assign_domains(profile.context, profile.data, ingested)
    get_run_logger().info("keyword decontamination: %d moves, %d drops, %d flagged (kept)", meta["moves"],
                          meta["dropped"], meta.get("flagged", 0))
    return meta


@task(name="finalize-domain", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_permanent,
      cache_policy=NO_CACHE)
def finalize_task(profile: Profile, domain: str, ingested: dict[str, dict], assigned: dict) -> dict:
    """Benchmark decontamination, dedup, split and write one domain (stage 3): its manifest path."""
    prepared = finalize_domain(profile.context, profile.data, domain, ingested, assigned)
    get_run_logger().info("%s: version %s (%s) %s", domain, prepared.version,
                          "cache hit" if prepared.cache_hit else "written", prepared.counts)
    return {"manifest": str(prepared.train_path.parent / "manifest.json"), "cache_hit": prepared.cache_hit,
            "classifier": assigned.get("classifier")}


@task(name="register-datasets", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_permanent,
      cache_policy=NO_CACHE)
def register_task(profile: Profile, finalized: dict[str, dict]) -> dict[str, dict]:
    """Record every finished domain in the catalog in one transaction (after all succeeded)."""
    prepared = {d: from_manifest(Path(f["manifest"]), cache_hit=f["cache_hit"]) for d, f in finalized.items()}
    clf = next((f["classifier"] for f in finalized.values() if f.get("classifier")), None)
    done = register_prepared(profile.context, prepared, Catalog.for_context(profile.context), run_ids(), clf)
    return {d: _summary(p) for d, p in done.items()}
