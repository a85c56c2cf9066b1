"""The paper's Tables 1-4 with the paper's columns, from what the pipeline stores.

What belongs here: turning stored results into table rows (``list[dict]``, column -> cell
text) and markdown. Each builder raises :class:`NotAvailable` with a one-line "run X"
message when its input does not exist yet; :func:`table_markdown` turns either into text.

* Table 1 (Experiment 1, paper 4.1): method, params (M), train loss, val loss, time (min),
  from the newest ``<store>/experiment1/*.json``.
* Table 2 (continual training, 4.2): domain, stacks, val losses per round, final loss, time
  (min), from the ``main`` run's manifest.
* Table 3 (progressive forgetting, 4.2.2): per evaluated domain and stage after the first,
  the ungated held-out loss ``no null space -> null space`` in one cell, from the manifests of
  ``no-null-space`` and ``main``; :func:`forgetting_deltas` gives Fig. 6's NS - NoNS deltas.
* Table 4 (benchmarks, 4.3.1): benchmark, base, routed, delta, from the newest
  ``<store>/eval/main/*/results.json`` that scored both modes (lm-evaluation-harness).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from brainstacks_core.lineage.context import StoreContext

PAPER_SCORE = "acc_mean_per_token (paper's score),none"
"""The eval summary key of the paper's multiple-choice score (mean per-token log-likelihood choice)."""


class NotAvailable(Exception):
    """A table's input is missing; the message says what to run."""


def _f(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def table_markdown(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A markdown table of ``rows`` (columns: ``columns`` or the first row's keys)."""
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


# ---------------------------------------------------------------- Table 1
TABLE1 = ["method", "params (M)", "train loss", "val loss", "time (min)"]


def experiment1_result(ctx: StoreContext) -> dict:
    """The newest Experiment 1 result (``run_experiment1_for_profile``'s JSON)."""
    path = _newest(sorted((ctx.store / "experiment1").glob("*.json")))
    if path is None:
        raise NotAvailable(f"no Experiment 1 result: run `brainstacks run --config {ctx.source_path}` "
                           "with `experiment1.enabled: true`")
    return json.loads(path.read_text())


def table1_rows(result: Mapping[str, Any]) -> list[dict]:
    """Single LoRA then MoE-LoRA: adapter parameters, last logged train task loss, final val loss, wall time."""
    moe_cfg = result.get("moe_config", {})
    names = {"lora": f"Single LoRA (r={result.get('lora_rank', 64)})",
             "moe": f"MoE-LoRA ({moe_cfg.get('num_experts', '?')} × r={moe_cfg.get('rank', '?')})"}
    rows = []
    for arm in ("lora", "moe"):
        a = result[arm]
        train = a["train_curve"][-1][1] if a.get("train_curve") else None
        rows.append({"method": names[arm], "params (M)": f"{a['trainable_params'] / 1e6:.4g}",
                     "train loss": _f(train), "val loss": _f(a["final_val_loss"]),
                     "time (min)": f"{a['seconds'] / 60:.2f}"})
    return rows


# ---------------------------------------------------------------- Table 2
TABLE2 = ["domain", "stacks", "val losses (per round)", "final loss", "time (min)"]


def table2_rows(manifest: Mapping[str, Any]) -> list[dict]:
    """Per domain: frozen stacks, every round's val loss (``*``: discarded), the kept loss, training minutes."""
    rows = []
    for dom in manifest["domains_order"]:
        rounds = manifest["domains"].get(dom, {}).get("rounds", [])
        if not rounds:
            continue
        kept = [r for r in rounds if r["status"] == "frozen"]
        final = kept[-1]["loss_after"] if kept else rounds[0]["loss_before"]
        losses = ", ".join(f"{r['loss_after']:.4f}" + ("" if r["status"] == "frozen" else "*") for r in rounds)
        rows.append({"domain": dom, "stacks": len(kept), "val losses (per round)": losses, "final loss": _f(final),
                     "time (min)": f"{sum(float(r.get('seconds') or 0.0) for r in rounds) / 60:.2f}"})
    if not rows:
        raise NotAvailable("the run has trained no round yet")
    return rows


def table2_total(rows: list[dict]) -> str:
    """The paper's "Total: N stacks across D domains, M minutes" line."""
    return (f"Total: {sum(r['stacks'] for r in rows)} stacks across {len(rows)} domains, "
            f"{sum(float(r['time (min)']) for r in rows):.2f} minutes. `*`: round discarded (no improvement "
            "or a spike); its stack was not kept.")


# ---------------------------------------------------------------- Table 3
def ungated(manifest: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """``{(eval domain, after stage): ungated held-out loss}`` of one run."""
    return {(r["domain"], r["after"]): float(r["ungated"]) for r in manifest.get("forgetting", [])
            if r.get("ungated") is not None}


def _stages(manifest: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    order = list(manifest["domains_order"])
    rec = manifest.get("forgetting", [])
    return [d for d in order if any(r["domain"] == d for r in rec)], [d for d in order if any(r["after"] == d for r in rec)]


def table3_rows(ns: Mapping[str, Any], nons: Mapping[str, Any]) -> tuple[list[str], list[dict]]:
    """Paired cells ``NoNS → NS`` per evaluated domain and stage after the first (the first is identical by
    construction: its domain trains without a null space in both runs).

    Returns:
        ``(columns, rows)``.
    """
    a, b = ungated(nons), ungated(ns)
    rows_d, stages = _stages(ns)
    stages = stages[1:]
    if not stages:
        raise NotAvailable("one domain only: Table 3 needs at least two trained domains")
    cols = ["eval domain", *[f"after {s} (NoNS → NS)" for s in stages]]
    rows = []
    for d in rows_d:
        row = {"eval domain": d}
        for s, c in zip(stages, cols[1:]):
            row[c] = f"{a[d, s]:.4f} → {b[d, s]:.4f}" if (d, s) in a and (d, s) in b else "—"
        rows.append(row)
    return cols, rows


def forgetting_deltas(ns: Mapping[str, Any], nons: Mapping[str, Any]) -> tuple[list[str], list[str], list[list[float]]]:
    """Fig. 6 (left): ``NS - NoNS`` ungated loss per (eval domain, stage); negative = the null space helped.

    Returns:
        ``(rows, stages, values)``, NaN where either run lacks the cell.
    """
    a, b = ungated(nons), ungated(ns)
    rows, stages = _stages(ns)
    return rows, stages, [[b[d, s] - a[d, s] if (d, s) in a and (d, s) in b else math.nan for s in stages]
                          for d in rows]


def table3_delta_rows(ns: Mapping[str, Any], nons: Mapping[str, Any]) -> tuple[list[str], list[dict]]:
    """:func:`forgetting_deltas` as a table with Table 3's layout (signed, 4 decimals)."""
    rows, stages, vals = forgetting_deltas(ns, nons)
    cols = ["eval domain", *[f"after {s} Δ (NS − NoNS)" for s in stages[1:]]]
    return cols, [{"eval domain": d, **{c: ("—" if not math.isfinite(v) else f"{v:+.4f}")
                                        for c, v in zip(cols[1:], row[1:])}} for d, row in zip(rows, vals)]


# ---------------------------------------------------------------- Table 4
TABLE4 = ["benchmark", "base", "routed", "delta"]


def eval_result(ctx: StoreContext, run_name: str = "main") -> dict:
    """The newest benchmark evaluation of ``run_name`` that scored both base and routed."""
    docs = []
    for p in sorted((ctx.store / "eval" / run_name).glob("*/results.json")):
        doc = json.loads(p.read_text())
        if {"base", "routed"} <= set(doc.get("modes", [])):
            docs.append((p.stat().st_mtime, doc))
    if not docs:
        raise NotAvailable(f"no benchmark evaluation with base and routed modes: run `brainstacks eval --config "
                           f"{ctx.source_path} --mode base,routed` (after `brainstacks train-router`)")
    return max(docs, key=lambda t: t[0])[1]


def headline_key(doc: Mapping[str, Any], task: str) -> str:
    """The paper's score where the task has it (multiple choice), else the harness headline metric."""
    scores = doc["summary"][task].get("base", {}).get("scores", {})
    if PAPER_SCORE in scores:
        return PAPER_SCORE
    comp = next((c for c in doc.get("comparisons", []) if c["task"] == task and c["a"] == "base"), None)
    if comp is not None and comp["metric"] in scores:
        return comp["metric"]
    return next(iter(scores))


def table4_rows(doc: Mapping[str, Any]) -> list[dict]:
    """Per benchmark: base and routed score on the same items and routed - base."""
    rows = []
    for task, by_mode in doc["summary"].items():
        if "base" not in by_mode or "routed" not in by_mode:
            continue
        key = headline_key(doc, task)
        base, routed = by_mode["base"]["scores"][key]["value"], by_mode["routed"]["scores"][key]["value"]
        metric = key.split(",")[0].replace(" (paper's score)", "")
        rows.append({"benchmark": f"{task} ({metric}, n={by_mode['base']['n']})", "base": f"{base:.3f}",
                     "routed": f"{routed:.3f}", "delta": f"{routed - base:+.3f}"})
    return rows
