"""Prefect tasks of the data step: thin wrappers over ``brainstacks_core.data.pipeline``.

Tasks pass stage metadata (small dicts with versions and file paths), never
DataFrames; each stage is cached by the version key it computes from its inputs,
so the Prefect cache key is that version, not a hash of data.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run, task_run

from brainstacks_core.data.pipeline import assign_domains, finalize_domain, ingest_domain
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile


def _run_ids() -> dict:
    return {"flow_run_id": str(flow_run.id) if flow_run.id else None,
            "task_run_id": str(task_run.id) if task_run.id else None}


@task(name="ingest-domain", retries=1, retry_delay_seconds=2)
def ingest_task(config_path: str, artifact_root: str | None, domain: str) -> dict:
    """Read, normalise, strip and validate one domain's sources (stage 1)."""
    profile = load_profile(config_path, artifact_root)
    meta = ingest_domain(profile, profile.data, domain)
    get_run_logger().info("ingested %s: %d rows in, key %s", domain, meta["n_in"], meta["key"])
    return meta


@task(name="keyword-decontamination")
def assign_task(config_path: str, artifact_root: str | None, ingested: dict[str, dict]) -> dict:
    """Cross-domain keyword decontamination over every domain (stage 2)."""
    profile = load_profile(config_path, artifact_root)
    meta = assign_domains(profile, profile.data, ingested)
    get_run_logger().info("keyword decontamination: %d moves, %d drops", meta["moves"], meta["dropped"])
    return meta


@task(name="finalize-domain", retries=2, retry_delay_seconds=5)
def finalize_task(config_path: str, artifact_root: str | None, domain: str, ingested: dict[str, dict],
                  assigned: dict) -> dict:
    """Benchmark decontamination, dedup, split, write and register one domain (stage 3)."""
    profile = load_profile(config_path, artifact_root)
    prepared = finalize_domain(profile, profile.data, domain, ingested, assigned,
                               Catalog(profile.catalog_path), _run_ids())
    get_run_logger().info("%s: version %s (%s) %s", domain, prepared.version,
                          "cache hit" if prepared.cache_hit else "new", prepared.counts)
    return {"domain": domain, "version": prepared.version, "cache_hit": prepared.cache_hit,
            "train_path": str(prepared.train_path), "val_path": str(prepared.val_path), **prepared.counts}
