"""Profile-level benchmark evaluation: load a trained run, score every mode and task, record it all.

:func:`evaluate_profile` is what ``brainstacks eval`` and the end of ``brainstacks
run`` call; :func:`evaluate_model` does the work on a model already in memory
(tests call it on tiny models). Per (mode, task) the harness runs its own task
config through :class:`~brainstacks_core.evaluation.model.BrainstacksLM`; per-item
rows go to the catalog's ``eval_items``, and the whole evaluation becomes one
``eval://<profile>/<run>`` artifact whose inputs are the base, the stacks, the
router (routed mode) and every benchmark file version. Results JSON, a markdown
table and a plot are written to ``<store>/eval/<run>/<version>/``.

Each evaluation protocol (``eval.protocols``: ``lm-eval``, ``paper``;
:mod:`~brainstacks_core.evaluation.protocol`) is its own evaluation: its own
settings, version, artifact (``eval://<profile>/<run>/paper``), folder and table.
:func:`evaluate_profile` loads the run once and scores every protocol asked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd

from brainstacks_core.evaluation import protocol as P
from brainstacks_core.evaluation import results as R
from brainstacks_core.evaluation.config import EvalConfig, EvalSetup
from brainstacks_core.evaluation.harness import quiet_harness, seeded
from brainstacks_core.evaluation.model import BrainstacksLM
from brainstacks_core.evaluation.record import record_evaluation, register_benchmarks
from brainstacks_core.evaluation.routing import Router
from brainstacks_core.evaluation.suite import check_request, task_specs
from brainstacks_core.lineage.versioning import content_hash
from brainstacks_core.reporting.sections import EVALUATION, publish_section, run_section
from brainstacks_core.routing.config import RoutingSetup
from brainstacks_core.training.trained_run import load_base_only, load_run

log = logging.getLogger(__name__)


def mode_lm(model, tokenizer, cfg: EvalConfig, mode: str, *, base_fingerprint: str,
            stack_versions: Mapping[str, str], router: Router | None = None,
            domain_stacks: Mapping[str, Sequence[str]] | None = None, catalog=None,
            request_bars: bool = False) -> BrainstacksLM:
    """The harness model of one mode, as every evaluation path builds it (the one-process evaluation and
    the fan-out's shards: their requests, and so their cache keys, are the same).

    ``cfg`` is the protocol's settings (:func:`~brainstacks_core.evaluation.protocol.protocol_config`):
    batch size, max length, and ``flush_forwards`` (K: scores are written every K forwards).
    """
    return BrainstacksLM(model, tokenizer, mode=mode, base_fingerprint=base_fingerprint,
                         stack_versions=stack_versions, router=router if mode == "routed" else None,
                         domain_stacks=domain_stacks, catalog=catalog, batch_size=cfg.batch_size,
                         max_length=cfg.max_length, request_bars=request_bars, flush_forwards=cfg.flush_forwards)


def evaluate_model(model, tokenizer, cfg: EvalConfig, *, profile_name: str, run_name: str, store: Path,
                   data_dir: Path, base_fingerprint: str, stack_versions: Mapping[str, str],
                   domain_stacks: Mapping[str, Sequence[str]] | None = None, router: Router | None = None,
                   modes: Sequence[str] | None = None, tasks: Sequence[str] | None = None, limit: int | None = None,
                   catalog=None, base_version: str | None = None, seed: int = 0, run_ids: dict | None = None,
                   progress: bool = True, progress_cb: Callable[[dict], None] | None = None,
                   no_router_reason: str = "no router was given (train the meta-router first)",
                   protocol: str = P.LM_EVAL) -> dict:
    """Score ``model`` in each mode on each task with the harness; record items, artifact, table, plot.

    Args:
        model, tokenizer: a causal LM with its frozen stacks attached (weights are restored after).
        cfg: the ``eval:`` section (its ``paper`` sub-section under the ``paper`` protocol).
        profile_name, run_name: name the artifact ``eval://<profile>/<run>``.
        store: the profile's artifact store (converted data, results).
        data_dir: folder of the benchmark files.
        base_fingerprint: identity of the base weights; ``base_version`` its catalog version (lineage).
        stack_versions: ``{stack_id: catalog version}`` of every attached stack.
        domain_stacks: ``{domain: [stack_id, ...]}`` (routed mode).
        router: the meta-router (routed mode); routed is skipped with ``no_router_reason`` when absent.
        modes, tasks, limit: override ``cfg.modes``, ``cfg.tasks`` and every task's limit.
        catalog: the lineage catalog (score cache, items, artifacts); ``None`` = nothing recorded.
        progress: a tqdm bar over (mode, task) pairs (HFLM's per-call request bars are then hidden).
        progress_cb: called with ``{"mode", "task", "done", "total", "computed", "reused"}`` before the
            first pair (``done`` 0) and after each (mode, task) pair (Prefect progress artifacts).
        protocol: ``lm-eval`` (the harness's scoring, the default) or ``paper`` (mean per-token
            log-probability, zero-shot, ``cfg.paper``'s n and max length).

    Returns:
        ``{"protocol", "version", "markdown", "plot", "results", "summary", "comparisons", "computed", "reused",
        "per_mode", "skipped"}``; ``per_mode[mode]`` counts requests computed / reused and routing
        decisions computed / reused.

    Raises:
        ValueError: an unknown mode, task or protocol (named), before anything is scored.
    """
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager, get_task_dict
    from tqdm.auto import tqdm

    full, cfg = cfg, P.protocol_config(cfg, protocol)
    modes = list(modes or cfg.modes)
    names = list(tasks or cfg.tasks)
    check_request(modes, names)
    skipped = {}
    if "routed" in modes and router is None:
        skipped["routed"] = no_router_reason
        modes.remove("routed")
    specs = task_specs(cfg, names, data_dir, store / "eval" / "data", seed, protocol)
    bench_versions = register_benchmarks(specs, profile_name, catalog)
    manager = TaskManager(include_defaults=False)
    summary: dict[str, dict] = {s.name: {} for s in specs}
    items: dict[str, dict[str, pd.DataFrame]] = {s.name: {} for s in specs}
    identities, per_mode = {}, {}
    total, done = len(modes) * len(specs), 0
    bar = tqdm(total=total, desc=f"eval ({protocol})", unit="task", disable=not progress)
    if progress_cb is not None:
        progress_cb({"protocol": protocol, "mode": None, "task": None, "done": 0, "total": total, "computed": 0,
                     "reused": 0})
    with quiet_harness(progress):
        # one task dict per task for the whole call (building one reads and converts its documents);
        # re-seeded before each evaluate so every mode gets the same few-shot contexts
        task_dicts = {spec.name: get_task_dict([spec.config], manager) for spec in specs}
        for mode in modes:
            lm = mode_lm(model, tokenizer, cfg, mode, base_fingerprint=base_fingerprint, stack_versions=stack_versions,
                         router=router, domain_stacks=domain_stacks, catalog=catalog, request_bars=not progress)
            identities[mode] = lm.mode_identity()
            for spec in specs:
                bar.set_postfix_str(f"{mode}/{spec.name}")
                n = limit if limit is not None else cfg.limit_for(spec.name)
                out = evaluator.evaluate(lm, seeded(task_dicts[spec.name]), limit=n,
                                         bootstrap_iters=cfg.bootstrap_iters, log_samples=True)
                rows = R.item_rows(spec, identities[mode], out, lm)
                items[spec.name][mode] = rows
                scores = P.summary_scores(protocol, spec.config.get("output_type") == "generate_until",
                                          R.task_scores(spec, out), R.mean_per_token(rows))
                summary[spec.name][mode] = {"scores": scores,
                                            "n": int(rows["doc_id"].nunique()), "identity": identities[mode]["id"]}
                done += 1
                bar.update(1)
                if progress_cb is not None:
                    progress_cb({"protocol": protocol, "mode": mode, "task": spec.name, "done": done, "total": total,
                                 "computed": sum(c["computed"] for c in per_mode.values()) + lm.computed,
                                 "reused": sum(c["reused"] for c in per_mode.values()) + lm.reused})
            per_mode[mode] = {"computed": lm.computed, "reused": lm.reused, "routes_computed": lm.routes_computed,
                              "routes_reused": lm.routes_reused}
    bar.close()
    comps = [c for s in specs for c in R.comparisons(s, items[s.name], cfg.alpha, cfg.power, cfg.bootstrap_iters)]
    limits = {s.name: (limit if limit is not None else cfg.limit_for(s.name)) for s in specs}
    scoring = cfg.model_dump(mode="json", include={"alpha", "power", "bootstrap_iters", "max_gen_toks", "num_fewshot"})
    version = content_hash(protocol, profile_name, run_name, identities, {s.name: s.version for s in specs}, limits,
                           scoring, length=16)
    return record_evaluation(
        full, scored=cfg, protocol=protocol, profile_name=profile_name, run_name=run_name,
        out_dir=P.result_dir(store, run_name, protocol, version),
        version=version, specs=specs, modes=modes, skipped=skipped, identities=identities, limits=limits,
        summary=summary, items=items, comps=comps, per_mode=per_mode, catalog=catalog,
        inputs=[v for v in [base_version, *stack_versions.values()] if v]
        + ([router.version] if "routed" in modes else []) + bench_versions, run_ids=run_ids)


def run_router(setup: RoutingSetup, run_name: str, run: dict, catalog=None) -> tuple[Router | None, str]:
    """The run's trained meta-router for routed mode, or ``(None, why not)``.

    A router trained on other stack versions than the run now has (the run retrained
    after ``train-router``) is not used: its routing would describe other stacks.
    """
    from brainstacks_core.routing.run import stale_router_reason, trained_router

    command = f"brainstacks train-router --config {setup.run.context.source_path} --run {run_name}"
    again = f"run `{command}` first"
    if not setup.router.enabled:
        return None, "router.enabled is false in this profile"
    router = trained_router(setup, run_name, run["model"], run["tokenizer"], catalog)
    if router is None:
        return None, f"run {run_name!r} has no trained meta-router in the catalog ({again})"
    stale = stale_router_reason(router, run["stack_versions"], command)
    return (None, stale) if stale else (router, "")


def combined(outs: Mapping[str, dict]) -> dict:
    """Several protocols' results as one return value, each kept whole under ``protocols``.

    The top-level keys are the first protocol's (what a caller scoring one protocol reads);
    ``markdown`` is every protocol's section in turn (its own heading and table) and ``plots``
    every protocol's plot.
    """
    first = next(iter(outs.values()))
    return {**first, "protocols": dict(outs), "markdown": "\n\n".join(o["markdown"] for o in outs.values()),
            "plots": [o["plot"] for o in outs.values() if o.get("plot")]}


def eval_plan(cfg: EvalConfig, modes: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
              protocols: Sequence[str] | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """``{protocol: (modes, tasks)}`` of one evaluation: ``protocols`` (default ``eval.protocols``), each with
    its own modes and tasks unless ``modes`` / ``tasks`` override them; protocols without tasks left out.

    Raises:
        ValueError: an unknown protocol, mode or task (named).
    """
    protocols = list(dict.fromkeys(protocols or cfg.protocols))
    P.check_protocols(protocols)
    plan = {}
    for p in protocols:
        scored = P.protocol_config(cfg, p)
        plan[p] = (list(modes or scored.modes), list(tasks or scored.tasks))
        check_request(*plan[p])
    return {p: mt for p, mt in plan.items() if mt[1]}


def resolve_data_dir(setup: EvalSetup) -> Path:
    """``eval.data_dir``, a relative path resolved against the repository root (as data sources are)."""
    cfg, ctx = setup.eval, setup.routing.run.context
    return cfg.data_dir if cfg.data_dir.is_absolute() else (ctx.repo_root / cfg.data_dir).resolve()


def load_for_eval(setup: EvalSetup, run_name: str, catalog, every_mode: set[str],
                  router: Router | None = None) -> tuple[dict, Router | None, str]:
    """The run to score (:func:`~brainstacks_core.training.trained_run.load_run`; the base alone before any
    training when only ``base`` mode is asked for) and its router: ``(run, router or None, why not)``.

    Raises:
        FileNotFoundError: the run has not trained and a mode other than ``base`` is asked for.
    """
    from brainstacks_core.training.run import current_run_dir

    train = setup.routing.run
    try:
        current_run_dir(train.context, run_name)
        trained = True
    except FileNotFoundError:
        if every_mode != {"base"}:
            raise
        log.info("eval: run %s has not trained; base mode scores the base alone", run_name)
        trained = False
    run = load_run(train, run_name, catalog) if trained else load_base_only(train, catalog)
    reason = ""
    if "routed" in every_mode and router is None:
        router, reason = run_router(setup.routing, run_name, run, catalog)
    return run, router, reason


def evaluate_profile(setup: EvalSetup, run_name: str = "main", catalog=None, modes: Sequence[str] | None = None,
                     router: Router | None = None, tasks: Sequence[str] | None = None, limit: int | None = None,
                     run_ids: dict | None = None, progress: bool = True,
                     progress_cb: Callable[[dict], None] | None = None,
                     protocols: Sequence[str] | None = None) -> dict:
    """Benchmark evaluation of a trained run (see :func:`evaluate_model`); ``setup`` is ``Profile.eval_setup``.

    ``eval.data_dir`` resolves against the repository root like data sources do.
    Routed mode uses ``router`` or else the run's trained meta-router
    (:func:`run_router`); without one it is skipped, and the result says why.
    ``modes == ["base"]`` works before any training (the base alone). The run is
    loaded once and scored under each of ``protocols`` (default ``eval.protocols``);
    ``modes``, ``tasks`` and ``limit`` override every protocol's own.

    The tables and plots become the report's evaluation section
    (``reports/sections/30-evaluation-<run>.md``; ``report.md`` is rebuilt and returned as ``report``).

    Returns:
        :func:`combined` of each protocol's :func:`evaluate_model` result (plus ``report``).

    Raises:
        ValueError: an unknown mode, task or protocol (named), before any model is loaded.
        FileNotFoundError: the run has not trained (names the command), or a benchmark file is missing.
    """
    cfg, ctx = setup.eval, setup.routing.run.context
    plan = eval_plan(cfg, modes, tasks, protocols)
    if not plan:
        log.info("eval: profile %s lists no tasks for %s; nothing to do", ctx.name,
                 ", ".join(protocols or cfg.protocols))
        return {"protocol": None, "version": None, "markdown": "", "plot": None, "plots": [], "results": None,
                "summary": {}, "comparisons": [], "computed": 0, "reused": 0, "per_mode": {}, "protocols": {},
                "skipped": {"all": "eval.tasks is empty"}}
    data_dir = resolve_data_dir(setup)
    run, router, reason = load_for_eval(setup, run_name, catalog, {m for ms, _ in plan.values() for m in ms}, router)
    outs = {}
    for p, (ms, ts) in plan.items():
        outs[p] = evaluate_model(run["model"], run["tokenizer"], cfg, profile_name=ctx.name, run_name=run_name,
                                 store=ctx.store, data_dir=data_dir, base_fingerprint=run["base_fingerprint"],
                                 stack_versions=run["stack_versions"], domain_stacks=run["domain_stacks"],
                                 router=router, modes=ms, tasks=ts, limit=limit, catalog=catalog,
                                 base_version=run["base_version"], seed=ctx.seed, run_ids=run_ids,
                                 progress=progress, progress_cb=progress_cb,
                                 no_router_reason=reason or "no router was given", protocol=p)
    out = combined(outs)
    versions = [o["version"] for o in outs.values() if o.get("version") is not None]
    if versions:
        out["report"] = publish_section(ctx, run_section(EVALUATION, run_name), out["markdown"], out["plots"],
                                        versions, catalog, run_ids)
    return out
