"""Oracle fan-out: the oracle of one run split into shards that run on several workers.

What belongs here: which prompts a shard owns and what one shard computes. The
runner that places shards on workers (a Dask cluster through prefect-dask) is the
flow's business (``flows/oracle_fanout.py``).

A shard owns the router-split pairs and the routed-evaluation test rows whose
``record_id`` hashes to it (:func:`shard_of`: stable across processes and hosts, so
a retried shard owns the same prompts). It loads the base and the run's frozen
stacks once, runs the same greedy search as the one-process oracle
(:func:`~brainstacks_core.routing.oracle.discover`) on its prompts, and writes every
loss to the catalog's ``oracle_losses`` cache in batches of at most
``router.oracle_flush_forwards`` (K) forwards. Inserts keep present keys, so a
shard retried after its worker died recomputes at most the K forwards it had not
flushed and adds no duplicate. The parent then runs the routing stage as usual and
finds every oracle loss in the cache: 0 oracle forwards.

Cost at Gemma-3-12B scale: each shard holds one base (~8 GB of 4-bit weights) plus
the run's 10 frozen stacks (~5.4 GB bf16) on its GPU, so shards = GPUs; a shard's
memory does not grow with its prompt count (losses are one float each, ~100 B per
catalog row). Loading costs one base read per shard per run, ~1 min from local NVMe,
against hours of oracle forwards over 10,000 prompts: under 5 % at 8 shards.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from brainstacks_core.lineage.versioning import content_hash
from brainstacks_core.routing.config import RoutingSetup
from brainstacks_core.routing.oracle import discover, exhaustive_indices
from brainstacks_core.routing.pair_loss import answerable
from brainstacks_core.routing.run_inputs import oracle_pairs, routed_test_rows, run_pointer

log = logging.getLogger(__name__)


def shard_of(record_id: str, n_shards: int) -> int:
    """The shard (0 .. n_shards-1) that owns the prompt with ``record_id``; the same on every host."""
    return int(content_hash("oracle-shard", str(record_id), length=8), 16) % max(1, n_shards)


def shard_rows(rows: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """The rows of ``rows`` owned by ``shard`` (in their original order)."""
    mine = [shard_of(r, n_shards) == shard for r in rows["record_id"].astype(str)]
    return rows[mine].reset_index(drop=True)


def run_oracle_shard(setup: RoutingSetup, run_name: str, shard: int, n_shards: int, catalog) -> dict:
    """Compute (or find cached) every oracle loss of the prompts ``shard`` owns, into ``catalog``.

    Args:
        setup: ``Profile.routing_setup`` of the trained run.
        run_name: the trained run (``main``).
        shard: this shard's index; n_shards: how many shards the run is split into.
        catalog: the shared catalog (PostgreSQL across hosts; the DuckDB file on one machine).

    Returns:
        ``{"shard", "n_shards", "pairs", "test_rows", "computed", "reused", "forwards",
        "load_seconds", "seconds"}``.
    """
    from brainstacks_core.training.trained_run import load_run

    if not 0 <= shard < n_shards:
        raise ValueError(f"oracle shard {shard} is not in 0..{n_shards - 1}")
    t0 = time.perf_counter()
    cfg = setup.router
    _, _, data_versions = run_pointer(setup, run_name)
    run = load_run(setup.run, run_name, catalog)
    load_s = time.perf_counter() - t0
    model, tok = run["model"], run["tokenizer"]
    stacks = {d: s for d, s in run["domain_stacks"].items() if s}
    domains = [d for d in setup.run.curriculum if d in stacks]
    counts = {"computed": 0, "reused": 0, "forwards": 0}

    def part(rows: pd.DataFrame, shard_cfg, sample_ids) -> int:
        mine = shard_rows(rows, shard, n_shards)
        if len(mine):
            res = discover(model, tok, mine, stacks, run["stack_versions"], run["base_fingerprint"], shard_cfg,
                           catalog, domains=domains, progress=False, exhaustive_ids=sample_ids)
            for k in ("computed", "reused", "forwards"):
                counts[k] += getattr(res, k)
        return len(mine)

    # router split (the parent's exhaustive sample is chosen over ALL its answerable pairs: pass its ids)
    pairs = oracle_pairs(setup, domains, catalog, data_versions)
    pairs = pairs[answerable(tok, pairs, cfg.max_length)].reset_index(drop=True)
    sample_ids = [str(pairs.at[i, "record_id"]) for i in exhaustive_indices(len(pairs), cfg.exhaustive_sample)]
    n_pairs = part(pairs, cfg, sample_ids)
    # test split (routed evaluation's oracle row: no exhaustive search there)
    test, _ = routed_test_rows(setup, domains, catalog, data_versions, tok)
    n_test = part(test, cfg.model_copy(update={"exhaustive_sample": 0}), None)
    out = {"shard": shard, "n_shards": n_shards, "pairs": n_pairs, "test_rows": n_test, **counts,
           "load_seconds": round(load_s, 3), "seconds": round(time.perf_counter() - t0, 3)}
    log.info("oracle shard %d/%d: %d router pairs + %d test rows, %d losses computed, %d reused, %d forwards "
             "(base load %.1f s of %.1f s)", shard, n_shards, n_pairs, n_test, out["computed"], out["reused"],
             out["forwards"], load_s, out["seconds"])
    return out
