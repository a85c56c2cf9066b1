"""Harness output -> per-item rows, per-task scores with stderr, paired comparisons, table and plot.

Per item (one harness document in one mode) a row keeps the choice scores
(log-likelihoods, or the generation and its filtered answer), the harness's
per-item metrics and, for multiple choice, the paper's **mean-per-token** score
(argmax of log-likelihood / continuation tokens; each choice's mean log-probability
is kept as ``mean_logprob``). That score depends on the tokenizer and is comparable
with nothing outside this repository; under the ``lm-eval`` protocol it is reported
beside the harness's metrics, labelled as such, under the ``paper`` protocol it is
the headline (:mod:`~brainstacks_core.evaluation.protocol`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainstacks_core.evaluation import stats
from brainstacks_core.files import atomic_write
from brainstacks_core.lineage.cache_tables import EVAL_ITEM_COLS

ITEM_COLS = EVAL_ITEM_COLS  # the catalog's eval_items columns


def _num(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def gold_choices(sample: dict, task_name: str) -> set[int]:
    """Indices of the correct choices of one logged multiple-choice sample of ``task_name``.

    TruthfulQA MC2 has several true answers (``mc2_targets.labels`` 1, listed first;
    its harness target is always 0): any of them counts. Its documents also carry
    ``mc1_targets``, and MC1's documents ``mc2_targets``: only the MC2 task reads the
    MC2 labels. A list target is a set of golds; an int target is the one gold.
    """
    if task_name.endswith("truthfulqa_mc2"):
        labels = ((sample.get("doc") or {}).get("mc2_targets") or {}).get("labels")
        if labels:
            return {i for i, label in enumerate(labels) if int(label) == 1}
    target = sample["target"]
    if isinstance(target, (list, tuple)):
        return {int(t) for t in target}
    return {target if isinstance(target, int) else 0}


def item_rows(task, mode_identity: dict, result: dict, lm) -> pd.DataFrame:
    """One row per (document, filter) of one task's harness run in one mode.

    Args:
        task: the :class:`~brainstacks_core.evaluation.suite.TaskSpec`.
        mode_identity: ``BrainstacksLM.mode_identity()``.
        result: what ``lm_eval.evaluator.evaluate(..., log_samples=True)`` returned.
        lm: the model (its tokenizer counts continuation tokens for mean-per-token).
    """
    rows = []
    for s in result["samples"][task.name]:
        metrics = {m: _num(s[m]) for m in s["metrics"] if m in s}
        filt = s.get("filter", "none")
        if task.config.get("output_type") == "multiple_choice":
            lls = [float(r[0]) for r in s["filtered_resps"]]
            toks = [lm.continuation_tokens(*a) for a in s["arguments"]]
            means = [ll / max(n, 1) for ll, n in zip(lls, toks)]  # mean per-token log-probability per choice
            scores = {"loglikelihood": lls, "continuation_tokens": toks, "mean_logprob": means}
            if lls:
                best = int(np.argmax(means))
                metrics["acc_mean_per_token"] = float(best in gold_choices(s, task.name))
        else:
            scores = {"generation": s["resps"][0][0] if s["resps"] and s["resps"][0] else "",
                      "extracted": s["filtered_resps"][0] if s["filtered_resps"] else ""}
        rows.append({"task": task.name, "task_version": task.version, "mode": mode_identity["mode"],
                     "identity": mode_identity["id"], "doc_id": int(s["doc_id"]), "doc_hash": s.get("doc_hash"),
                     "target": json.dumps(_num(s["target"]), default=str), "filter": filt,
                     "scores": json.dumps(scores, default=str), "metrics": json.dumps(metrics, default=str)})
    return pd.DataFrame(rows, columns=ITEM_COLS)


def task_scores(task, result: dict) -> dict[str, dict]:
    """``{"metric,filter": {"value", "stderr"}}`` as the harness aggregated them (its stderr)."""
    res = result["results"][task.name]
    out = {}
    for key, value in res.items():
        if "," not in key or "_stderr" in key:
            continue
        metric, filt = key.split(",", 1)
        err = res.get(f"{metric}_stderr,{filt}")
        out[key] = {"value": float(value), "stderr": float(err) if isinstance(err, (int, float)) else None}
    return out


def mean_per_token(items: pd.DataFrame) -> dict:
    """The paper's mean-per-token accuracy of one task/mode with its closed-form stderr.

    Returns:
        ``{"acc_mean_per_token,none": {"value", "stderr"}}``, or ``{}`` for a generative task.
    """
    vals = [json.loads(m).get("acc_mean_per_token") for m in items["metrics"]]
    vals = [v for v in vals if v is not None]
    if not vals:
        return {}
    p = float(np.mean(vals))
    se = math.sqrt(p * (1 - p) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"acc_mean_per_token,none": {"value": p, "stderr": se}}


def per_item(items: pd.DataFrame, metric: str, filt: str) -> pd.Series:
    """Headline per-item metric indexed by doc_id."""
    sel = items[items["filter"] == filt] if "filter" in items else items
    return pd.Series([json.loads(m).get(metric) for m in sel["metrics"]], index=sel["doc_id"].to_numpy(),
                     dtype=float).sort_index()


def comparisons(task, items_by_mode: dict[str, pd.DataFrame], alpha: float, power: float,
                iters: int) -> list[dict]:
    """Paired tests of the headline metric for every pair of scored modes, on common items."""
    order = [m for m in ("base", "ungated", "routed") if m in items_by_mode]
    out = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            x, y = per_item(items_by_mode[a], task.metric, task.filter), per_item(items_by_mode[b], task.metric,
                                                                                  task.filter)
            common = x.index.intersection(y.index)
            res = stats.compare(x[common].to_numpy(), y[common].to_numpy(), alpha, power, iters)
            out.append({"task": task.name, "metric": f"{task.metric},{task.filter}", "a": a, "b": b, **res})
    return out


def markdown_table(summary: dict, comps: list[dict], modes: list[str]) -> str:
    """Score ± harness stderr per task and mode, then the paired tests with p-values and MDD."""
    lines = ["| task | metric | n | " + " | ".join(modes) + " |", "|---|---|---|" + "---|" * len(modes)]
    for task, by_mode in summary.items():
        keys = list(dict.fromkeys(k for m in modes for k in by_mode.get(m, {}).get("scores", {})))
        for key in keys:
            cells = []
            for m in modes:
                s = by_mode.get(m, {}).get("scores", {}).get(key)
                cells.append("—" if s is None else f"{s['value']:.3f} ± {s['stderr']:.3f}" if s["stderr"] is not None
                             else f"{s['value']:.3f}")
            n = next((by_mode[m]["n"] for m in modes if m in by_mode), 0)
            lines.append(f"| {task} | {key.replace(',none', '')} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "Paired tests on the same items (McNemar exact for 0/1 scores, paired bootstrap otherwise); "
              "MDD = minimum detectable difference at this n (alpha, power as profiled; planning value assumes "
              "independent items at accuracy 0.5).", "",
              "| task | metric | a | b | b - a | a only | b only | p | MDD | MDD (planning) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        lines.append(f"| {c['task']} | {c['metric'].replace(',none', '')} | {c['a']} | {c['b']} | {c['diff']:+.3f} | "
                     f"{c.get('a_only', '—')} | {c.get('b_only', '—')} | {c['p_value']:.3g} | {c['mdd']:.3f} | "
                     f"{c['mdd_planning']:.3f} |")
    return "\n".join(lines)


def plot_scores(summary: dict, tasks: dict, modes: list[str], path: str | Path) -> Path:
    """Bar chart: headline score per task (x) and mode (bars), harness stderr as error bars.

    Not drawn again when ``path`` already holds the chart of the same scores (the hash of its
    inputs, code and matplotlib versions is in the PNG: :func:`~brainstacks_core.files.png_is_current`).
    """
    from importlib.metadata import version

    from brainstacks_core.files import PNG_INPUTS_KEY, png_is_current
    from brainstacks_core.lineage.versioning import code_version, content_hash

    names = list(summary)
    key = content_hash("plot", "scores", code_version(), version("matplotlib"), summary,
                       {t: (tasks[t].metric, tasks[t].filter) for t in names}, list(modes), length=24)
    if png_is_current(path, key):
        return Path(path)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(modes))
    for j, m in enumerate(modes):
        vals, errs = [], []
        for t in names:
            s = summary[t].get(m, {}).get("scores", {}).get(f"{tasks[t].metric},{tasks[t].filter}")
            vals.append(np.nan if s is None else s["value"])
            errs.append(0.0 if s is None or s["stderr"] is None else s["stderr"])
        ax.bar(np.arange(len(names)) + (j - (len(modes) - 1) / 2) * width, vals, width, yerr=errs, capsize=3,
               label=m)
    ax.set_xticks(np.arange(len(names)), [f"{t}\n({tasks[t].metric})" for t in names], rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel("score (± harness stderr)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={PNG_INPUTS_KEY: key})
    return Path(path)
