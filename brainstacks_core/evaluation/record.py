"""Where an evaluation's results go: table, plot, results JSON, per-item rows and the catalog artifact.

What belongs here: :func:`register_benchmarks` (each task's data files as
``benchmark://`` artifacts) and :func:`record_evaluation`, called by
:func:`~brainstacks_core.evaluation.run.evaluate_model` once every (mode, task)
pair is scored. Files go to ``<store>/eval/<run>/<version>/`` (``table.md``,
``scores.png``, ``results.json``; the paper protocol's to ``<store>/eval/<run>/paper/<version>/``);
per-item rows to the catalog's ``eval_items``; the evaluation itself becomes the
``eval://<profile>/<run>`` artifact (``eval://<profile>/<run>/paper``) whose
inputs are the base, the stacks, the router (routed mode) and every benchmark
file version, so ``brainstacks audit --artifact eval://...`` lists them.

Memory: the per-item frames of one evaluation (a few hundred bytes per item and
mode), never more; nothing here holds tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from brainstacks_core.evaluation import results as R
from brainstacks_core.evaluation import protocol as P
from brainstacks_core.evaluation.config import EvalConfig
from brainstacks_core.evaluation.suite import TaskSpec
from brainstacks_core.files import atomic_write_json, atomic_write_text, sha256_file
from brainstacks_core.lineage.versioning import code_version, config_hash

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


def counts_line(per_mode: dict) -> str:
    """One line: requests computed / from the cache per mode (and routing decisions in routed mode)."""
    parts = []
    for mode, c in per_mode.items():
        part = f"{mode} {c['computed']} computed, {c['reused']} from the cache"
        if mode == "routed":
            part += f" (routing: {c['routes_computed']} prompts routed, {c['routes_reused']} from the cache)"
        parts.append(part)
    return "Requests: " + "; ".join(parts) + "." if parts else "Requests: none."


def record_evaluation(cfg: EvalConfig, *, profile_name: str, run_name: str, out_dir: Path, version: str,
                      specs: Sequence, modes: list[str], skipped: dict[str, str], identities: dict,
                      limits: dict, summary: dict, items: dict[str, dict[str, pd.DataFrame]], comps: list[dict],
                      per_mode: dict, catalog=None, inputs: Sequence[str] = (), run_ids: dict | None = None,
                      protocol: str = P.LM_EVAL, scored: EvalConfig | None = None) -> dict:
    """Write the table, the plot and ``results.json``; record items and the ``eval://`` artifact.

    Args:
        cfg: the ``eval:`` section (its hash is the artifact's config hash).
        profile_name, run_name: name the artifact ``eval://<profile>/<run>``.
        out_dir: ``<store>/eval/<run>/<version>``.
        version: the evaluation's version (identities, task versions, limits).
        specs: the :class:`~brainstacks_core.evaluation.suite.TaskSpec` of every task scored.
        modes: the modes scored; ``skipped``: ``{mode: reason}`` of those that were not.
        identities: ``{mode: BrainstacksLM.mode_identity()}``.
        limits: items per task; ``summary``, ``items``, ``comps``: scores, per-item rows, paired tests.
        per_mode: requests computed / reused per mode.
        catalog: where items and the artifact go (``None``: files only).
        inputs: upstream versions (base, stacks, router, benchmark files).
        protocol: ``lm-eval`` or ``paper``: its own heading, ``results.json`` key and artifact URI.
        scored: the settings the protocol ran under (``protocol_config(cfg, protocol)``; default ``cfg``).

    Returns:
        ``{"protocol", "version", "markdown", "plot", "results", "summary", "comparisons", "computed",
        "reused", "per_mode", "skipped"}``; the markdown is the same on a re-run (what each call computed is in
        ``per_mode``, :func:`counts_line` and the log, not in the table).
    """
    computed = sum(c["computed"] for c in per_mode.values())
    reused = sum(c["reused"] for c in per_mode.values())
    table = R.markdown_table(summary, comps, modes)
    plot = R.plot_scores(summary, {s.name: s for s in specs}, modes, out_dir / "scores.png")
    md = "\n".join([P.title(protocol, scored or cfg, run_name, limits), "", P.note(protocol), "", table, "",
                    *[f"Mode `{m}` skipped: {why}." for m, why in skipped.items()], f"Plot: {plot}"])
    atomic_write_text(out_dir / "table.md", md)
    settings = (scored or cfg).model_dump(mode="json", include={"max_length", "max_gen_toks"})
    doc = {"protocol": protocol, "version": version, "profile": profile_name, "run": run_name, "modes": modes,
           "settings": settings, "skipped": skipped, "identities": identities,
           "tasks": {s.name: {"version": s.version, "limit": limits[s.name]} for s in specs},
           "summary": summary, "comparisons": comps}  # no per-call counts: the file is the version's, re-runs
    # rewrite it byte for byte and its sha256 in the catalog stays true (counts: the return value and the log)
    res_path = atomic_write_json(out_dir / "results.json", doc)
    if catalog is not None:
        frames = [df for by_mode in items.values() for df in by_mode.values()]
        every = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=R.ITEM_COLS)
        with catalog.batch():
            catalog.record_eval_items(version, every)
            catalog.record_artifact(uri=P.artifact_uri(profile_name, run_name, protocol), version=version,
                                    kind="eval", path=str(res_path), sha256=sha256_file(res_path),
                                    code_version=code_version(),
                                    config_hash=config_hash(cfg), inputs=list(dict.fromkeys(inputs)),
                                    metadata={"protocol": protocol, "modes": modes, "tasks": list(summary),
                                              "computed": computed, "reused": reused, "skipped": skipped,
                                              "table": str(out_dir / "table.md")},
                                    run_ids=run_ids)
    log.info("eval %s: %s %s", version, counts_line(per_mode), res_path)
    return {"protocol": protocol, "version": version, "markdown": md, "plot": str(plot), "results": str(res_path),
            "summary": summary, "comparisons": comps, "computed": computed, "reused": reused, "per_mode": per_mode,
            "skipped": skipped}
