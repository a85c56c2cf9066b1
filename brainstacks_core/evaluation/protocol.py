"""Evaluation protocols: lm-eval's standard scoring (``lm-eval``) and the paper's (``paper``), never mixed.

What belongs here: what differs between the protocols once the harness has run,
and nothing else (the harness still runs every task, tokenises, batches and
truncates; :class:`~brainstacks_core.evaluation.model.BrainstacksLM` still caches
each request by the effective model it ran on).

``lm-eval`` (the default, the headline): the harness's own task YAMLs, few-shot
settings (GSM8K 5-shot) and metrics (``acc`` = argmax of the summed choice
log-likelihood), ``eval.limit`` items, ``eval.max_length`` context.

``paper`` (paper 4.3.1, ``eval.paper``): the paper's 8 benchmarks zero-shot;
every multiple-choice item scored by the **mean per-token log-probability** of
each choice (the harness's summed log-likelihood over the choice's token count
from the model's tokenizer, as the harness split context and continuation),
highest wins; GSM8K generated from an Alpaca instruction prompt (no examples,
``tasks/paper/gsm8k.yaml``) and exact-matched; ``eval.paper.limit`` items (200),
``eval.paper.max_length`` tokens (512).

Each protocol has its own evaluation version, results folder, ``results.json``
(``"protocol"`` key), catalog artifact URI and markdown table; a request scored
identically by both (same effective model, same max length, same arguments) is
the same computation and shares the score cache, which is keyed by those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from brainstacks_core.evaluation.config import PROTOCOLS, EvalConfig

LM_EVAL, PAPER = "lm-eval", "paper"
PAPER_SCORE = "acc_mean_per_token"  # the per-item metric of the paper protocol's multiple-choice tasks
LM_EVAL_PAPER_LABEL = "acc_mean_per_token (paper's score)"  # the same score beside lm-eval's, labelled


def check_protocols(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming an unknown protocol (before any model is loaded)."""
    bad = [p for p in names if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown eval protocol {', '.join(map(repr, bad))} (known: {', '.join(PROTOCOLS)})")


def protocol_config(cfg: EvalConfig, protocol: str) -> EvalConfig:
    """The ``eval:`` settings one protocol runs under.

    ``lm-eval``: ``cfg`` itself. ``paper``: ``cfg`` with tasks, modes, limit, max length
    and generation length from ``cfg.paper``, no per-task limits and no few-shot overrides
    (every paper task is zero-shot: :func:`~brainstacks_core.evaluation.suite.task_spec`).
    """
    check_protocols([protocol])
    if protocol == LM_EVAL:
        return cfg
    p = cfg.paper
    return cfg.model_copy(update={"tasks": p.tasks, "modes": p.modes, "limit": p.limit, "task_limits": {},
                                  "max_length": p.max_length, "max_gen_toks": p.max_gen_toks, "num_fewshot": {}})


def headline(protocol: str, generative: bool) -> tuple[str, str]:
    """(metric, filter) compared between modes: exact match (flexible extract) for generation; for multiple
    choice the harness's ``acc`` (lm-eval) or the mean per-token choice (paper)."""
    if generative:
        return "exact_match", "flexible-extract"
    return ("acc", "none") if protocol == LM_EVAL else (PAPER_SCORE, "none")


def summary_scores(protocol: str, generative: bool, harness: dict, per_token: dict) -> dict:
    """One task/mode's ``{"metric,filter": {"value", "stderr"}}`` under ``protocol``.

    Args:
        harness: the harness's aggregated scores (:func:`~brainstacks_core.evaluation.results.task_scores`).
        per_token: the mean per-token accuracy (:func:`~brainstacks_core.evaluation.results.mean_per_token`).

    ``lm-eval``: every harness score plus the per-token score under its own label; ``paper``:
    the per-token score alone for multiple choice (the harness's summed-log-likelihood ``acc``
    is another protocol's number), the harness's exact match for generation.
    """
    if protocol == LM_EVAL:
        return {**harness, **{f"{LM_EVAL_PAPER_LABEL},{k.split(',', 1)[1]}": v for k, v in per_token.items()}}
    return dict(harness) if generative else dict(per_token)


def title(protocol: str, cfg: EvalConfig, run_name: str, limits: dict[str, int | None] | None = None) -> str:
    """The heading of one protocol's table (``cfg`` as :func:`protocol_config` returned it; ``limits`` the
    items per task actually asked for, e.g. a ``--limit`` override, else ``cfg.limit``)."""
    if protocol == LM_EVAL:
        return f"## Benchmark evaluation (`{run_name}`, lm-evaluation-harness)"
    ns = set((limits or {}).values()) or {cfg.limit}
    n = "all" if ns == {None} else str(ns.pop()) if len(ns) == 1 else "per task"
    length = cfg.max_length if cfg.max_length is not None else "model's"
    return (f"## Benchmarks (paper protocol: mean per-token log-prob, zero-shot Alpaca GSM8K, n={n}, "
            f"len {length}) (`{run_name}`)")


def note(protocol: str) -> str:
    """The line under the heading that says how the numbers were scored."""
    if protocol == LM_EVAL:
        return ("Scores ± the harness's standard errors; `acc_mean_per_token (paper's score)` is the paper's "
                "mean per-token log-likelihood choice, tokenizer-dependent and comparable with nothing "
                "outside this repository.")
    return ("Paper protocol (paper 4.3.1), not the lm-eval headline: multiple choice = the choice with the "
            "highest mean per-token log-probability (`acc_mean_per_token`, tokens of the model's tokenizer); "
            "GSM8K = exact match of an answer generated zero-shot from an Alpaca instruction prompt; every "
            "task zero-shot. Compare these numbers only with other paper-protocol tables.")


def result_dir(store: Path, run_name: str, protocol: str, version: str) -> Path:
    """``<store>/eval/<run>/<version>`` (lm-eval) or ``<store>/eval/<run>/<protocol>/<version>``."""
    base = Path(store) / "eval" / run_name
    return base / version if protocol == LM_EVAL else base / protocol / version


def artifact_uri(profile_name: str, run_name: str, protocol: str) -> str:
    """``eval://<profile>/<run>`` (lm-eval) or ``eval://<profile>/<run>/<protocol>``."""
    uri = f"eval://{profile_name}/{run_name}"
    return uri if protocol == LM_EVAL else f"{uri}/{protocol}"
