"""Evaluation fan-out: one run's benchmark evaluation split into shards that run on several workers.

What belongs here: which (protocol, mode, task, document range) units a shard owns, what
one shard computes, and whether an evaluation is already current (the cheap gate the
fan-out asks before it starts any shard). The runner that places shards on workers (a
Dask cluster through prefect-dask) is the flow's business (``flows/eval_fanout.py``).

Shard ``s`` of ``N`` owns, of every (protocol, mode, task) the evaluation scores, the
documents ``[s*n//N, (s+1)*n//N)`` of the ``n`` the task scores (:func:`doc_range`), so
every shard gets an equal share of every task and no document is owned twice. It loads
the run once (:func:`~brainstacks_core.evaluation.run.load_for_eval`), builds each task's
requests exactly as ``evaluator.evaluate`` does for the whole task (all ``n`` documents,
the few-shot sampler seeded first: lm-eval draws each document's shots from one random
stream, so building only a slice would give other contexts, other keys), keeps the
requests of its documents and scores them through the same
:class:`~brainstacks_core.evaluation.model.BrainstacksLM` the one-process evaluation
builds (:func:`~brainstacks_core.evaluation.run.mode_lm`). So its scores land in the
catalog's ``eval_scores`` under the very keys the parent looks up, every
``eval.flush_forwards`` (K) forwards. Inserts keep present keys: a shard retried after
its worker died redoes at most the K forwards it had not flushed and adds no duplicate.
The parent then runs the evaluation as usual and computes 0 requests.

Cost at Gemma-3-12B scale: a shard holds one base (~8 GB of 4-bit weights) and the run's
10 frozen stacks (~5.4 GB bf16) on its GPU, so shards = GPUs; its memory does not grow
with its document count (a score is a few floats, ~100 B per catalog row). Loading is
~1 min per shard per run against hours of forwards over 8 benchmarks x 3 modes.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from brainstacks_core.evaluation import protocol as P
from brainstacks_core.evaluation.config import EvalSetup
from brainstacks_core.evaluation.harness import quiet_harness, seeded
from brainstacks_core.evaluation.run import eval_plan, load_for_eval, mode_lm, resolve_data_dir
from brainstacks_core.evaluation.suite import TaskSpec, task_specs
from brainstacks_core.files import sha256_file

log = logging.getLogger(__name__)


def doc_range(n_docs: int, shard: int, n_shards: int) -> tuple[int, int]:
    """``[start, stop)``: the positions of the ``n_docs`` scored documents that ``shard`` owns."""
    return shard * n_docs // n_shards, (shard + 1) * n_docs // n_shards


def task_requests(spec: TaskSpec, limit: int | None, manager) -> list:
    """Every request (lm-eval ``Instance``) of one task over its first ``limit`` documents, built as
    ``evaluator.evaluate`` builds them (seeded few-shot sampler, rank 0 of 1, no chat template)."""
    from lm_eval.evaluator_utils import get_sample_size
    from lm_eval.tasks import get_task_dict

    out = []
    for task in _harness_tasks(seeded(get_task_dict([spec.config], manager))):
        task.build_all_requests(limit=get_sample_size(task, limit), samples=None, rank=0, world_size=1,
                                cache_requests=False, rewrite_requests_cache=False, system_instruction=None,
                                apply_chat_template=False, fewshot_as_multiturn=False, chat_template=None,
                                tokenizer_name="")
        out += task.instances
    return out


def _harness_tasks(task_dict: dict) -> list:
    """The harness Task objects of a task dict (new ``{"tasks": ...}`` form or the legacy nested one)."""
    if isinstance(task_dict.get("tasks"), dict):
        return list(task_dict["tasks"].values())
    out = []
    for value in task_dict.values():
        if isinstance(value, dict):
            out += _harness_tasks(value)
        elif hasattr(value, "build_all_requests"):
            out.append(value)
    return out


def owned(instances: list, shard: int, n_shards: int) -> tuple[list, tuple[int, int]]:
    """The requests of the documents ``shard`` owns, and the positions ``[start, stop)`` they span."""
    docs = sorted({i.doc_id for i in instances})
    start, stop = doc_range(len(docs), shard, n_shards)
    mine = set(docs[start:stop])
    return [i for i in instances if i.doc_id in mine], (start, stop)


def score_requests(lm, instances: list) -> None:
    """Run ``instances`` through ``lm`` by request type, ``repeats`` copies each (as ``evaluator.evaluate``);
    the results go to ``lm``'s score cache, nothing is returned."""
    by_type: dict[str, list] = defaultdict(list)
    for inst in instances:
        by_type[inst.request_type] += [inst] * inst.repeats
    for kind, reqs in by_type.items():
        getattr(lm, kind)(reqs)


def run_eval_shard(setup: EvalSetup, run_name: str, shard: int, n_shards: int, catalog,
                   modes: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                   limit: int | None = None, protocols: Sequence[str] | None = None) -> dict:
    """Score (or find cached) every request of the units ``shard`` owns, into ``catalog``'s score cache.

    Args:
        setup: ``Profile.eval_setup`` of the run.
        run_name: the trained run (``main``).
        shard: this shard's index; n_shards: how many shards the evaluation is split into.
        catalog: the shared catalog (PostgreSQL across hosts; the DuckDB file on one machine).
        modes, tasks, limit, protocols: the evaluation's overrides, as
            :func:`~brainstacks_core.evaluation.run.evaluate_profile` takes them.

    Returns:
        ``{"shard", "n_shards", "units", "requests", "computed", "reused", "forwards", "writes",
        "routes_computed", "skipped", "load_seconds", "seconds"}``; ``units`` lists
        ``[protocol, mode, task, start, stop]`` (document positions).

    Raises:
        ValueError: a shard index outside ``0 .. n_shards-1``, or an unknown mode, task or protocol.
    """
    from lm_eval.tasks import TaskManager

    if not 0 <= shard < n_shards:
        raise ValueError(f"eval shard {shard} is not in 0..{n_shards - 1}")
    t0 = time.perf_counter()
    cfg, ctx = setup.eval, setup.routing.run.context
    plan = eval_plan(cfg, modes, tasks, protocols)
    run, router, reason = load_for_eval(setup, run_name, catalog, {m for ms, _ in plan.values() for m in ms})
    load_s = time.perf_counter() - t0
    data_dir, manager = resolve_data_dir(setup), TaskManager(include_defaults=False)
    counts = dict.fromkeys(("requests", "computed", "reused", "forwards", "writes", "routes_computed"), 0)
    units, skipped = [], {}
    with quiet_harness():
        for p, (ms, ts) in plan.items():
            scored = P.protocol_config(cfg, p)
            specs = task_specs(scored, ts, data_dir, ctx.store / "eval" / "data", ctx.seed, p)
            mine = {}
            for spec in specs:
                n = limit if limit is not None else scored.limit_for(spec.name)
                mine[spec.name] = owned(task_requests(spec, n, manager), shard, n_shards)
            for mode in ms:
                if mode == "routed" and router is None:
                    skipped[f"{p}/routed"] = reason or "no router"
                    continue
                lm = mode_lm(run["model"], run["tokenizer"], scored, mode, base_fingerprint=run["base_fingerprint"],
                             stack_versions=run["stack_versions"], router=router,
                             domain_stacks=run["domain_stacks"], catalog=catalog)
                for name, (reqs, (start, stop)) in mine.items():
                    score_requests(lm, reqs)
                    units.append([p, mode, name, start, stop])
                    counts["requests"] += len(reqs)
                for k in ("computed", "reused", "forwards", "writes", "routes_computed"):
                    counts[k] += getattr(lm, k)
    out = {"shard": shard, "n_shards": n_shards, "units": units, **counts, "skipped": skipped,
           "load_seconds": round(load_s, 3), "seconds": round(time.perf_counter() - t0, 3)}
    log.info("eval shard %d/%d: %d units, %d requests, %d computed, %d reused, %d forwards in %d writes "
             "(load %.1f s of %.1f s)", shard, n_shards, len(units), out["requests"], out["computed"],
             out["reused"], out["forwards"], out["writes"], load_s, out["seconds"])
    return out


def evaluation_is_current(setup: EvalSetup, run_name: str, catalog, modes: Sequence[str] | None = None,
                          tasks: Sequence[str] | None = None, limit: int | None = None,
                          protocols: Sequence[str] | None = None) -> bool:
    """Whether the last recorded evaluation of each protocol already scored exactly this request.

    Cheap (the run's manifest, the catalog's latest ``eval://`` and ``router://`` artifacts, the
    results file and the task versions; no model): the same modes (or the same skipped), the same
    base and stack versions, the same router in routed mode, the same task versions and limits, the
    same max length and generation length. Errs towards False (a routed mode skipped before is not
    current once a router exists, even a stale one): the shards then find their scores cached.
    """
    from brainstacks_core.routing.router import router_uri
    from brainstacks_core.routing.run_inputs import run_pointer

    if catalog is None:
        return False
    cfg, ctx = setup.eval, setup.routing.run.context
    try:
        _, manifest, _ = run_pointer(setup.routing, run_name)
    except (OSError, ValueError):
        return False
    stacks = {r["stack_id"]: r["version"] for d in manifest.get("domains", {}).values()
              for r in d.get("rounds", []) if r.get("status") == "frozen"}
    router_art = catalog.latest(router_uri(ctx.name, run_name)) if setup.routing.router.enabled else None
    data_dir = resolve_data_dir(setup)
    for p, (ms, ts) in eval_plan(cfg, modes, tasks, protocols).items():
        art = catalog.latest(P.artifact_uri(ctx.name, run_name, p))
        try:
            if art is None or sha256_file(Path(art["path"])) != art["sha256"]:
                return False
            doc = json.loads(Path(art["path"]).read_text())
        except (OSError, ValueError):
            return False
        scored = P.protocol_config(cfg, p)
        if set(doc["modes"]) | set(doc["skipped"]) != set(ms) or (
                "routed" in doc["skipped"] and router_art is not None):
            return False
        for mode in doc["modes"]:
            ident = doc["identities"][mode]
            want_router = router_art["version"] if mode == "routed" and router_art else None
            if (ident["base"], ident["stacks"], ident["router"]) != (
                    manifest.get("base_fingerprint"), {} if mode == "base" else stacks, want_router):
                return False
        specs = task_specs(scored, ts, data_dir, ctx.store / "eval" / "data", ctx.seed, p)
        want = {s.name: {"version": s.version, "limit": limit if limit is not None else scored.limit_for(s.name)}
                for s in specs}
        if doc["tasks"] != want or doc["settings"] != scored.model_dump(mode="json",
                                                                         include={"max_length", "max_gen_toks"}):
            return False
    return True
