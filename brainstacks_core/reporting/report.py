"""The training section of the profile report: round losses, forgetting matrix, Experiment 1, with PNG plots.

Reads the runs' manifests and the Experiment 1 result from the artifact store,
writes the plots to ``<store>/reports/`` and the section to
``reports/sections/10-training.md``, then rebuilds ``report.md`` from every section
(``brainstacks_core.reporting.sections``), so the report registered in the catalog
lists every stack of the runs among its inputs and its lineage reaches the data.
"""

from __future__ import annotations

import json
import logging

from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.reporting.rl_table import rl_table

log = logging.getLogger(__name__)
RUN_LABELS = {"main": "null space", "no-null-space": "no null space"}


def _manifest(ctx: StoreContext, run_name: str) -> dict:
    from brainstacks_core.training.run import current_run_dir

    path = current_run_dir(ctx, run_name) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no training manifest at {path}: run `brainstacks train --config "
                                f"{ctx.source_path}` first")
    return json.loads(path.read_text())


def round_table(manifest: dict) -> str:
    """Markdown: per domain, every round's validation loss before/after and its fate."""
    lines = ["| domain | round | status | val loss before | val loss after | reason |", "|---|---|---|---|---|---|"]
    for dom in manifest["domains_order"]:
        for r in manifest["domains"].get(dom, {}).get("rounds", []):
            lines.append(f"| {dom} | {r['round']} | {r['status']} | {r['loss_before']:.4f} | "
                         f"{r['loss_after']:.4f} | {r['reason']} |")
    return "\n".join(lines)


def experiment1_summary(result: dict) -> str:
    """Markdown lines for Experiment 1 (``Experiment1Result.to_dict()`` plus ``domain``)."""
    moe, lora = result["moe"], result["lora"]
    at = result.get("moe_reaches_lora_final_at")
    lora_final = lora["val_curve"][-1][1]
    return "\n".join([
        f"Domain `{result['domain']}`, same data and steps. Trainable parameters: MoE-LoRA "
        f"{moe['trainable_params']:,}, single LoRA r{result.get('lora_rank', 64)} {lora['trainable_params']:,}.",
        "", "| step | MoE-LoRA val loss | single LoRA val loss |", "|---|---|---|",
        *[f"| {a[0]} | {a[1]:.4f} | {b[1]:.4f} |" for a, b in zip(moe["val_curve"], lora["val_curve"])], "",
        f"MoE-LoRA reaches single LoRA's final loss ({lora_final:.4f}) at step {at} of "
        f"{lora['val_curve'][-1][0]}." if at is not None else
        f"MoE-LoRA did not reach single LoRA's final loss ({lora_final:.4f}) within {lora['val_curve'][-1][0]} steps.",
        f"Wall time: MoE-LoRA {moe['seconds']:.1f} s, single LoRA {lora['seconds']:.1f} s."])


def stack_rows(manifest: dict) -> list[dict]:
    """One row per trained round (frozen or discarded): domain, round, status, val losses, version, stack id."""
    return [{"domain": dom, "round": r["round"], "status": r["status"],
             "val_loss_before": round(float(r["loss_before"]), 4), "val_loss": round(float(r["loss_after"]), 4),
             "version": r.get("version"), "stack_id": r["stack_id"],
             "reused_from": manifest["domains"][dom].get("reused_from")}
            for dom in manifest["domains_order"] for r in manifest["domains"].get(dom, {}).get("rounds", [])]


def run_summary(ctx: StoreContext, run_name: str) -> dict:
    """One run's rounds and forgetting matrix as markdown, its heatmap and round-loss PNGs, and its stacks.

    Returns:
        ``{"markdown", "plot" (the heatmap), "plots" (heatmap, round losses), "stacks" (:func:`stack_rows`)}``.
    """
    from brainstacks_core.reporting import plots

    label = RUN_LABELS.get(run_name, run_name)
    m = _manifest(ctx, run_name)
    png = plots.plot_forgetting({label: m}, ctx.store / "reports" / f"forgetting-{run_name}.png")
    rounds = plots.plot_round_losses(m, ctx.store / "reports" / f"rounds-{run_name}.png")
    md = "\n".join([f"# Continual training `{ctx.name}` / `{run_name}`", "", "## Rounds", "", round_table(m), "",
                    "## Forgetting matrix (held-out test loss)", "", plots.forgetting_table({label: m}), "",
                    f"Plots: {png}, {rounds}"])
    return {"markdown": md, "plot": str(png), "plots": [str(png), str(rounds)], "stacks": stack_rows(m)}


def training_section(ctx: StoreContext, run_names: list[str]) -> dict:
    """The training section of the report: rounds, RL, forgetting matrix, Experiment 1, with their plots.

    Returns:
        ``{"markdown", "plots", "inputs"}``; ``inputs``: every stack version of the runs and the
        Experiment 1 result's catalog version when there is one.
    """
    from brainstacks_core.reporting import plots
    from brainstacks_core.reporting.paper import paper_section

    out_dir = ctx.store / "reports"
    manifests = {RUN_LABELS.get(r, r): _manifest(ctx, r) for r in run_names}
    png = [plots.plot_forgetting(manifests, out_dir / "forgetting.png")]
    md = []
    for run, (label, m) in zip(run_names, manifests.items()):
        png.append(plots.plot_round_losses(m, out_dir / f"rounds-{run}.png"))
        md += [f"## Rounds ({label})", "", round_table(m), ""]
        md += [f"## Per-domain RL ({label})", "", rl_table(m), ""]
    md += ["## Forgetting matrix (held-out test loss per domain; isolated = own stacks only, as_trained = the "
           "stacks active while the domain trained, its own and every earlier domain's, checked equal to the "
           "training-time validation loss; ungated = all stacks)", "",
           plots.forgetting_table(manifests), ""]
    inputs = sorted({r["version"] for m in manifests.values() for d in m["domains"].values()
                     for r in d["rounds"] if r.get("version")})
    exp_dir = ctx.store / "experiment1"
    results = sorted(exp_dir.glob("*.json"), key=lambda p: p.stat().st_mtime) if exp_dir.exists() else []
    if results:  # <store>/experiment1/<catalog version>.json
        result = json.loads(results[-1].read_text())
        png.append(plots.plot_experiment1(result, out_dir / "experiment1.png"))
        md += ["## Experiment 1: MoE-LoRA vs single LoRA", "", experiment1_summary(result), ""]
        inputs.append(results[-1].stem)
    md += ["Plots: " + ", ".join(str(p) for p in png)]
    return {"markdown": "\n".join(md), "plots": [str(p) for p in png], "inputs": inputs}


def build_report(ctx: StoreContext, run_names: list[str], catalog=None, run_ids: dict | None = None) -> dict:
    """Write the training section (:func:`training_section`) and rebuild ``report.md`` from every section.

    Routing and benchmark evaluation add their sections when they finish
    (:func:`~brainstacks_core.reporting.sections.publish_section`); the report carries whatever
    sections exist, in order.

    Returns:
        :func:`~brainstacks_core.reporting.sections.assemble_report`'s ``{markdown, plots, path, version,
        sections}``.
    """
    from brainstacks_core.reporting.sections import TRAINING, publish_section

    section = training_section(ctx, run_names)
    return publish_section(ctx, TRAINING, section["markdown"], section["plots"], section["inputs"], catalog, run_ids)


def build_paper_report(ctx: StoreContext, run_names: list[str], catalog=None, run_ids: dict | None = None,
                       setup=None) -> dict:
    """The paper's tables and figures as the report's ``40-paper`` section; rebuilds ``report.md``.

    Runs after routing and evaluation (Table 4 reads the evaluation). ``setup`` (the profile's
    ``TrainingSetup``) lets it measure the subspace and expert figures
    (:func:`~brainstacks_core.reporting.paper.paper_section`).

    Returns:
        :func:`~brainstacks_core.reporting.sections.assemble_report`'s dict plus ``paper``: the section's
        ``{"markdown", "plots"}``.
    """
    from brainstacks_core.reporting.paper import paper_section
    from brainstacks_core.reporting.sections import PAPER, publish_section

    md, png = paper_section(ctx, run_names, setup=setup, catalog=catalog)
    stacks = sorted({r["version"] for run in run_names for d in _manifest(ctx, run)["domains"].values()
                     for r in d["rounds"] if r.get("version")})
    report = publish_section(ctx, PAPER, md, png, stacks, catalog, run_ids)
    return {**report, "paper": {"markdown": md, "plots": [str(p) for p in png]}}