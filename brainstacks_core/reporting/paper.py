"""The report's "paper tables and figures" section: Tables 1-4 and Figs. 4-10 of the Brainstacks paper.

What belongs here: :func:`paper_section`, which the report calls once. It reads what the
pipeline stored (manifests of ``main`` and ``no-null-space``, the Experiment 1 result, the
benchmark evaluation) through :mod:`.paper_tables`, measures the ``main`` run's per-domain
subspaces and expert use when a training setup is given (:mod:`.subspace`, once per version:
the base and stacks are loaded only when a file is missing, on the worker that runs the report),
and draws :mod:`.paper_figures` into ``<store>/reports/paper/``. A missing input gives one
line "not available: ..." in the place of its table or figure, never an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.reporting import paper_figures as F
from brainstacks_core.reporting import paper_tables as T
from brainstacks_core.reporting.subspace import load_subspace, measure_run, subspace_dir

log = logging.getLogger(__name__)
NS, NONS = "main", "no-null-space"


def _manifest(ctx: StoreContext, run_name: str) -> dict:
    from brainstacks_core.training.run import current_run_dir

    try:
        path = current_run_dir(ctx, run_name) / "manifest.json"
    except FileNotFoundError:
        path = None
    if path is None or not path.exists():
        hint = (" (the ablation: `training.ablation: true` with `training.null_space: true`)"
                if run_name == NONS else "")
        raise T.NotAvailable(f"run `{run_name}` has not trained: run `brainstacks run --config {ctx.source_path}`"
                             + hint)
    return json.loads(path.read_text())


def _missing(why: str) -> str:
    return f"Not available: {why}"


def subspace_files(ctx: StoreContext, run_name: str, setup=None, catalog=None) -> dict[str, Path]:
    """``{domain: subspace file}`` of a run: measured now where missing when ``setup`` is given, else the newest
    file per domain already on disk."""
    if setup is not None:
        return measure_run(setup, run_name, catalog)
    manifest = _manifest(ctx, run_name)
    folder = subspace_dir(ctx, run_name)
    out = {}
    for dom in manifest["domains_order"]:
        files = sorted(folder.glob(f"{dom}-*.safetensors"), key=lambda p: p.stat().st_mtime)
        if files:
            out[dom] = files[-1]
    return out


def paper_section(ctx: StoreContext, run_names: list[str] | None = None, setup=None,
                  catalog=None) -> tuple[str, list[Path]]:
    """Markdown of Tables 1-4 and Figs. 4-10 (module docstring) and the PNGs it drew.

    Args:
        ctx: the profile's store.
        run_names: the runs the report covers (``main`` and, with the ablation, ``no-null-space``).
        setup: the profile's ``TrainingSetup``; with it the subspace and expert figures are measured
            where missing (None: only files already on disk are read).
        catalog: lineage catalog (dataset lookup while measuring), or None.

    Returns:
        ``(markdown, [png paths])``.
    """
    runs = list(run_names or [NS])
    out = ctx.store / "reports" / "paper"
    md, png = ["## Paper tables and figures", ""], []

    def figure(title: str, draw) -> None:
        try:
            p = draw()
        except T.NotAvailable as exc:
            md.extend([f"**{title}**", "", _missing(str(exc)), ""])
            return
        png.append(p)
        md.extend([f"**{title}**", "", f"Plot: {p}", ""])

    md += ["### Table 1: MoE-LoRA vs single LoRA (Experiment 1)", ""]
    try:
        res = T.experiment1_result(ctx)
        md += [T.table_markdown(T.table1_rows(res), T.TABLE1), "",
               f"Domain `{res.get('domain')}`; train loss: the task loss at the last logging step (the paper's "
               "MoE-LoRA figure adds the load-balance term); val loss: the last evaluation.", ""]
    except T.NotAvailable as exc:
        md += [_missing(str(exc)), ""]

    manifests: dict[str, dict] = {}
    for run in dict.fromkeys([NS, NONS, *runs]):
        try:
            manifests[run] = _manifest(ctx, run)
        except T.NotAvailable as exc:
            manifests[run] = {"missing": str(exc)}
    ns, nons = manifests[NS], manifests[NONS]

    md += [f"### Table 2: continual training (`{NS}`)", ""]
    try:
        if "missing" in ns:
            raise T.NotAvailable(ns["missing"])
        rows = T.table2_rows(ns)
        md += [T.table_markdown(rows, T.TABLE2), "", T.table2_total(rows), ""]
    except T.NotAvailable as exc:
        md += [_missing(str(exc)), ""]

    def need(*ms: dict) -> None:
        for m in ms:
            if "missing" in m:
                raise T.NotAvailable(m["missing"])

    def fig_ungated() -> Path:
        need(ns)
        both = {"null space": ns, **({"no null space": nons} if "missing" not in nons else {})}
        return F.plot_ungated(both, out / "fig4-5-ungated.png")

    def fig_ns_effect() -> Path:
        need(ns, nons)
        return F.plot_null_space_effect(ns, nons, out / "fig6-ns-effect.png")

    md += ["### Figs. 4/5: ungated interference (with / without null space)", ""]
    figure("Ungated held-out loss per domain after each stage", fig_ungated)

    md += ["### Table 3: progressive forgetting, NoNS → NS (ungated held-out loss)", ""]
    try:
        need(ns, nons)
        cols, rows = T.table3_rows(ns, nons)
        dcols, drows = T.table3_delta_rows(ns, nons)
        md += [T.table_markdown(rows, cols), "", "Fig. 6 deltas (NS − NoNS; negative: the null space reduced "
               "interference):", "", T.table_markdown(drows, dcols), ""]
    except T.NotAvailable as exc:
        md += [_missing(str(exc)), ""]
    figure("Fig. 6: null-space projection effect", fig_ns_effect)

    md += ["### Table 4: zero-shot benchmarks, base vs routed (lm-evaluation-harness)", ""]
    try:
        doc = T.eval_result(ctx, NS)
        rows = T.table4_rows(doc)
        if not rows:
            raise T.NotAvailable("the evaluation scored no task in both base and routed modes")
        md += [T.table_markdown(rows, T.TABLE4), "", f"Evaluation `{doc.get('version')}`; multiple-choice tasks by "
               "the paper's mean per-token log-likelihood choice where scored, else the harness headline metric; "
               "delta = routed − base on the same items.", ""]
    except T.NotAvailable as exc:
        md += [_missing(str(exc)), ""]

    md += [f"### Figs. 7-10: expert utilisation and subspaces (`{NS}`; Figs. 8 and 10 also `{NONS}`)", ""]
    by_run: dict[str, dict[str, dict]] = {}
    for run, label in ((NS, "null space"), (NONS, "no null space")):
        try:
            need(manifests[run])
            try:
                files = subspace_files(ctx, run, setup, catalog)
            except OSError as exc:  # the base or a data split is not on this machine
                raise T.NotAvailable(f"could not load run `{run}` to measure it ({exc})") from exc
            subs = {d: load_subspace(p) for d, p in files.items()}
            if not subs:
                raise T.NotAvailable(f"no subspace measurement of `{run}`: the report measures it when run by "
                                     f"`brainstacks run --config {ctx.source_path}`")
            by_run[label] = subs
        except T.NotAvailable as exc:
            md += [_missing(f"{label}: {exc}"), ""]
    subspaces = by_run.get("null space", {})
    if subspaces:
        md += ["Measured per domain from its own frozen stacks on its first validation rows (the null space's "
               f"rows and k; `{subspace_dir(ctx, NS)}`).", ""]
        doms, use = F.expert_usage(subspaces)
        md += [T.table_markdown([{"domain": d, **{f"expert {i}": f"{v:.3f}" for i, v in enumerate(row)}}
                                 for d, row in zip(doms, use)]), ""]
        figure("Fig. 7: expert activation per domain", lambda: F.plot_expert_usage(subspaces, out / "fig7-experts.png"))
        figure("Fig. 9: singular-value spectrum per domain", lambda: F.plot_spectra(subspaces, out / "fig9-spectra.png"))
    multi = {label: subs for label, subs in by_run.items() if len(subs) > 1}
    if multi:
        overlap = {label: F.overlap_matrix(subs) for label, subs in multi.items()}
        md += ["Overlap of domains' directions (mean principal-angle cosine over all layers; 0 = orthogonal):", "",
               T.table_markdown([{"run": label, **{f"{a} / {b}": f"{vals[i][j]:.3f}" for i, a in enumerate(doms)
                                                   for j, b in enumerate(doms) if j > i}}
                                 for label, (doms, vals) in overlap.items()]), ""]
        figure("Fig. 8: cross-domain overlap of principal directions",
               lambda: F.plot_overlap_matrix(multi, out / "fig8-overlap.png"))
        figure("Fig. 10: per-layer overlap between domains",
               lambda: F.plot_block_overlaps(multi, out / "fig10-layer-overlap.png"))
    return "\n".join(md), png
