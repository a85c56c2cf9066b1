"""Profile-level benchmark evaluation: load a trained run, score every mode and task, record it all.

:func:`evaluate_profile` is what ``brainstacks eval`` and the end of ``brainstacks
run`` call; :func:`evaluate_model` does the work on a model already in memory
(tests call it on tiny models). Per (mode, task) the harness runs its own task
config through :class:`~brainstacks_core.evaluation.model.BrainstacksLM`; per-item
rows go to the catalog's ``eval_items``, and the whole evaluation becomes one
``eval://<profile>/<run>`` artifact whose inputs are the base, the stacks, the
router (routed mode) and every benchmark file version. Results JSON, a markdown
table and a plot are written to ``<store>/eval/<run>/<version>/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from brainstacks_core.evaluation import results as R
from brainstacks_core.evaluation.config import EvalConfig
from brainstacks_core.evaluation.model import BrainstacksLM
from brainstacks_core.evaluation.routing import Router
from brainstacks_core.evaluation.suite import TaskSpec, task_specs
from brainstacks_core.files import atomic_write_json, atomic_write_text, sha256_file
from brainstacks_core.lineage.versioning import code_version, config_hash, content_hash

log = logging.getLogger(__name__)


def register_benchmarks(specs: Sequence[TaskSpec], profile_name: str, catalog) -> list[str]:
    """Each task's data files as ``benchmark://<profile>/<task>/<split>`` artifacts; returns their versions."""
    versions = []
    for spec in specs:
        for split, (path, version) in spec.data.items():
            if catalog is not None:
                catalog.record_artifact(uri=f"benchmark://{profile_name}/{spec.name}/{split}", version=version,
                                        kind="benchmark", path=str(path), sha256=sha256_file(path),
                                        code_version=code_version(), config_hash=None,
                                        metadata={"task_version": spec.version})
            versions.append(version)
    return versions


def evaluate_model(model, tokenizer, cfg: EvalConfig, *, profile_name: str, run_name: str, store: Path,
                   data_dir: Path, base_fingerprint: str, stack_versions: Mapping[str, str],
                   domain_stacks: Mapping[str, Sequence[str]] | None = None, router: Router | None = None,
                   modes: Sequence[str] | None = None, tasks: Sequence[str] | None = None, limit: int | None = None,
                   catalog=None, base_version: str | None = None, seed: int = 0, run_ids: dict | None = None,
                   progress: bool = True) -> dict:
    """Score ``model`` in each mode on each task with the harness; record items, artifact, table, plot.

    Args:
        model, tokenizer: a causal LM with its frozen stacks attached (weights are restored after).
        cfg: the ``eval:`` section.
        profile_name, run_name: name the artifact ``eval://<profile>/<run>``.
        store: the profile's artifact store (converted data, results).
        data_dir: folder of the benchmark files.
        base_fingerprint: identity of the base weights; ``base_version`` its catalog version (lineage).
        stack_versions: ``{stack_id: catalog version}`` of every attached stack.
        domain_stacks: ``{domain: [stack_id, ...]}`` (routed mode).
        router: the meta-router (routed mode); routed is skipped with a note when absent.
        modes, tasks, limit: override ``cfg.modes``, ``cfg.tasks`` and every task's limit.
        catalog: the lineage catalog (score cache, items, artifacts); ``None`` = nothing recorded.

    Returns:
        ``{"version", "markdown", "plot", "results", "summary", "comparisons", "computed", "reused", "skipped"}``.
    """
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager, get_task_dict
    from tqdm.auto import tqdm

    modes = list(modes or cfg.modes)
    skipped = {}
    if "routed" in modes and router is None:
        skipped["routed"] = "no router was given (train the meta-router first)"
        modes.remove("routed")
    specs = task_specs(cfg, list(tasks or cfg.tasks), data_dir, store / "eval" / "data", seed)
    bench_versions = register_benchmarks(specs, profile_name, catalog)
    manager = TaskManager(include_defaults=False)
    summary: dict[str, dict] = {s.name: {} for s in specs}
    items: dict[str, dict[str, pd.DataFrame]] = {s.name: {} for s in specs}
    identities, computed, reused = {}, 0, 0
    bar = tqdm(total=len(modes) * len(specs), desc="eval", unit="task", disable=not progress)
    for mode in modes:
        lm = BrainstacksLM(model, tokenizer, mode=mode, base_fingerprint=base_fingerprint,
                           stack_versions=stack_versions, router=router if mode == "routed" else None,
                           domain_stacks=domain_stacks, catalog=catalog, batch_size=cfg.batch_size,
                           max_length=cfg.max_length)
        identities[mode] = lm.mode_identity()
        for spec in specs:
            bar.set_postfix_str(f"{mode}/{spec.name}")
            n = limit if limit is not None else cfg.limit_for(spec.name)
            out = evaluator.evaluate(lm, get_task_dict([spec.config], manager), limit=n,
                                     bootstrap_iters=cfg.bootstrap_iters, log_samples=True)
            rows = R.item_rows(spec, identities[mode], out, lm)
            items[spec.name][mode] = rows
            summary[spec.name][mode] = {"scores": {**R.task_scores(spec, out), **R.mean_per_token(rows)},
                                        "n": int(rows["doc_id"].nunique()), "identity": identities[mode]["id"]}
            bar.update(1)
        computed, reused = computed + lm.computed, reused + lm.reused
    bar.close()
    comps = [c for s in specs for c in R.comparisons(s, items[s.name], cfg.alpha, cfg.power, cfg.bootstrap_iters)]
    limits = {s.name: (limit if limit is not None else cfg.limit_for(s.name)) for s in specs}
    version = content_hash(profile_name, run_name, identities, {s.name: s.version for s in specs}, limits, length=16)
    out_dir = store / "eval" / run_name / version
    table = R.markdown_table(summary, comps, modes)
    plot = R.plot_scores(summary, {s.name: s for s in specs}, modes, out_dir / "scores.png")
    md = "\n".join([f"## Benchmark evaluation (`{run_name}`, lm-evaluation-harness)", "",
                    "Scores ± the harness's standard errors; `acc_mean_per_token (paper's score)` is the paper's "
                    "mean per-token log-likelihood choice, tokenizer-dependent and comparable with nothing "
                    "outside this repository.", "", table, "",
                    *[f"Mode `{m}` skipped: {why}." for m, why in skipped.items()], f"Plot: {plot}"])
    atomic_write_text(out_dir / "table.md", md)
    doc = {"version": version, "profile": profile_name, "run": run_name, "modes": modes, "skipped": skipped,
           "identities": identities, "tasks": {s.name: {"version": s.version, "limit": limits[s.name]} for s in specs},
           "summary": summary, "comparisons": comps, "computed": computed, "reused": reused}
    res_path = atomic_write_json(out_dir / "results.json", doc)
    if catalog is not None:
        every = pd.concat([df for by_mode in items.values() for df in by_mode.values()], ignore_index=True) \
            if any(items.values()) else pd.DataFrame(columns=R.ITEM_COLS)
        with catalog.batch():
            catalog.record_eval_items(version, every)
            inputs = [v for v in [base_version, *stack_versions.values()] if v]
            if "routed" in modes:
                inputs.append(router.version)
            catalog.record_artifact(uri=f"eval://{profile_name}/{run_name}", version=version, kind="eval",
                                    path=str(res_path), sha256=sha256_file(res_path), code_version=code_version(),
                                    config_hash=config_hash(cfg), inputs=inputs + bench_versions,
                                    metadata={"modes": modes, "tasks": list(summary), "computed": computed,
                                              "reused": reused, "table": str(out_dir / "table.md")},
                                    run_ids=run_ids)
    log.info("eval %s: %d requests computed, %d reused; %s", version, computed, reused, res_path)
    return {"version": version, "markdown": md, "plot": str(plot), "results": str(res_path), "summary": summary,
            "comparisons": comps, "computed": computed, "reused": reused, "skipped": skipped}


def load_run(profile, run_name: str, catalog=None) -> dict:
    """The profile's base with every frozen stack of run ``run_name`` attached (checksums verified).

    Returns:
        ``{"model", "tokenizer", "base_fingerprint", "base_version", "stack_versions", "domain_stacks"}``.
    """
    from brainstacks_core.stacks.stack_io import attach_stack, load_stack
    from brainstacks_core.training.continual import domain_stacks
    from brainstacks_core.training.run import current_run_dir, ensure_base, load_domain_data, load_model

    folder = current_run_dir(profile, run_name)
    pointer = json.loads((folder.parent / "current.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    versions = {d: v[0] for d, v in pointer.get("data", {}).items()}
    info = ensure_base(profile, load_domain_data(profile, profile.curriculum, catalog, versions), catalog)
    model, tok = load_model(profile, info)
    stack_versions = {}
    for dom in manifest["domains_order"]:
        for r in manifest["domains"].get(dom, {}).get("rounds", []):
            if r["status"] != "frozen":
                continue
            sf = load_stack(r["file"], base_fingerprint=info.fingerprint)
            if sf.file_sha256 != r["file_sha256"]:
                raise ValueError(f"{r['file']}: sha256 differs from the manifest's: a frozen stack file changed")
            attach_stack(model, sf)
            stack_versions[r["stack_id"]] = r["version"]
    model.eval()
    return {"model": model, "tokenizer": tok, "base_fingerprint": info.fingerprint, "base_version": info.fingerprint,
            "stack_versions": stack_versions,
            "domain_stacks": {d: domain_stacks(manifest, d) for d in manifest["domains_order"]}}


def evaluate_profile(profile, run_name: str = "main", catalog=None, modes: Sequence[str] | None = None,
                     router: Router | None = None, tasks: Sequence[str] | None = None, limit: int | None = None,
                     run_ids: dict | None = None, progress: bool = True) -> dict:
    """Benchmark evaluation of a trained run of ``profile`` (see :func:`evaluate_model`).

    ``eval.data_dir`` resolves against the repository root like data sources do.
    """
    cfg = profile.eval
    tasks = list(tasks or cfg.tasks)
    if not tasks:
        log.info("eval: profile %s lists no eval.tasks; nothing to do", profile.name)
        return {"version": None, "markdown": "", "plot": None, "results": None, "summary": {}, "comparisons": [],
                "computed": 0, "reused": 0, "skipped": {"all": "eval.tasks is empty"}}
    data_dir = cfg.data_dir if cfg.data_dir.is_absolute() else (profile.repo_root / cfg.data_dir).resolve()
    run = load_run(profile, run_name, catalog)
    return evaluate_model(run["model"], run["tokenizer"], cfg, profile_name=profile.name, run_name=run_name,
                          store=profile.store, data_dir=data_dir, base_fingerprint=run["base_fingerprint"],
                          stack_versions=run["stack_versions"], domain_stacks=run["domain_stacks"], router=router,
                          modes=modes, tasks=tasks, limit=limit, catalog=catalog, base_version=run["base_version"],
                          seed=profile.seed, run_ids=run_ids, progress=progress)
