"""Figures and text tables of a run: forgetting matrix, boosting rounds, Experiment 1.

What belongs here: turning a continual-run manifest (``continual.run_continual``)
or an :class:`~brainstacks_core.training.experiment1.Experiment1Result` into PNGs and
markdown. Matplotlib is imported inside the functions and used through its
object API on an Agg canvas (no pyplot, no global backend switch), so importing
this module is cheap and plotting is safe in worker threads. Every PNG is written
atomically (:func:`brainstacks_core.files.atomic_write`) and carries the hash of what it
was drawn from (:func:`plot_key`: the plotted values, the code and matplotlib versions); a
plot whose file already carries the same hash is not drawn again (a re-run redraws nothing).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from brainstacks_core.files import PNG_INPUTS_KEY, atomic_write, png_is_current

MODES = ("isolated", "as_trained", "ungated")
"""Forgetting modes: own stacks only; the stacks active while the domain trained (its own and every
earlier domain's); every stack."""


def forgetting_matrix(manifest: Mapping[str, Any], mode: str) -> tuple[list[str], list[str], list[list[float]]]:
    """The forgetting matrix of one run in one mode.

    Args:
        manifest: a continual-run manifest (``forgetting`` rows, ``domains_order``).
        mode: "isolated", "as_trained", "ungated" or "base".

    Returns:
        ``(rows, stages, values)``: evaluated domains, "after" domains (both in
        curriculum order), and ``values[i][j]`` = loss of ``rows[i]`` after
        ``stages[j]`` (NaN where the domain was not trained yet).
    """
    records = manifest.get("forgetting", [])
    order = list(manifest.get("domains_order") or [])
    for r in records:  # domains missing from the order keep their first-seen position
        for d in (r["after"], r["domain"]):
            if d not in order:
                order.append(d)
    stages = [d for d in order if any(r["after"] == d for r in records)]
    rows = [d for d in order if any(r["domain"] == d for r in records)]
    cell = {(r["domain"], r["after"]): float(r[mode]) for r in records if r.get(mode) is not None}
    values = [[cell.get((d, a), math.nan) for a in stages] for d in rows]
    return rows, stages, values


def plot_key(kind: str, *inputs: Any) -> str:
    """Hash of one figure's inputs: its kind, everything it plots, the code and matplotlib versions."""
    from importlib.metadata import version

    from brainstacks_core.lineage.versioning import code_version, content_hash

    return content_hash("plot", kind, code_version(), version("matplotlib"), *inputs, length=24)


def _save(fig, path: str | os.PathLike[str], key: str | None = None) -> Path:
    """Write ``fig`` as PNG atomically; ``key`` (:func:`plot_key`) goes into its text chunk."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                    metadata={PNG_INPUTS_KEY: key} if key else None)
    return Path(path)


def plot_forgetting(manifests: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Heatmaps of the forgetting matrix: one panel per (run label x isolated/as_trained/ungated).

    Rows are the evaluated domains, columns the "after <domain>" stages, cells the
    held-out test loss (annotated); cells of domains not yet trained are blank. All
    panels share one colour scale, so runs (e.g. with and without null space) compare.

    Args:
        manifests: run label -> manifest, e.g. ``{"null space": m1, "no null space": m2}``.
        path: PNG to write.

    Returns:
        ``Path(path)``.
    """
    import numpy as np
    from matplotlib.figure import Figure

    if not manifests:
        raise ValueError("no manifest to plot")
    key = plot_key("forgetting", [(label, m.get("forgetting"), m.get("domains_order")) for label, m in manifests.items()])
    if png_is_current(path, key):
        return Path(path)
    panels = [(label, mode, *forgetting_matrix(m, mode)) for label, m in manifests.items() for mode in MODES]
    finite = [v for *_, vals in panels for row in vals for v in row if math.isfinite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    n_runs = len(manifests)
    width = max(3.2, 1.1 * max((len(p[3]) for p in panels), default=1) + 1.8)
    height = max(2.6, 0.55 * max((len(p[2]) for p in panels), default=1) + 1.6)
    fig = Figure(figsize=(2 * width, n_runs * height), layout="constrained")
    axes = fig.subplots(n_runs, 2, squeeze=False)
    image = None
    for ax, (label, mode, rows, stages, vals) in zip(axes.flat, panels):
        arr = np.ma.masked_invalid(np.array(vals, dtype=float).reshape(len(rows), len(stages)))
        image = ax.imshow(arr, cmap="viridis_r", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(stages)), [f"after {s}" for s in stages], rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(f"{label}: {mode}")
        mid = (vmin + vmax) / 2
        for i, row in enumerate(vals):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8,
                            color="white" if v > mid else "black")
    if image is not None:
        fig.colorbar(image, ax=axes, label="test loss", shrink=0.8)
    return _save(fig, path, key)


def forgetting_table(manifests: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown tables of the forgetting matrix, one per (run label x mode), 4 decimals.

    Each table has a row per evaluated domain, a column per "after" stage ("—"
    where the domain was not trained yet) and a last column with the bare base's loss.
    """
    blocks = []
    for label, m in manifests.items():
        base_rows, _, base_vals = forgetting_matrix(m, "base")
        base = {d: next((v for v in reversed(row) if math.isfinite(v)), math.nan)
                for d, row in zip(base_rows, base_vals)}
        for mode in MODES:
            rows, stages, vals = forgetting_matrix(m, mode)
            head = ["eval domain", *[f"after {s}" for s in stages], "base"]
            lines = [f"**{label}: {mode}**", "", "| " + " | ".join(head) + " |",
                     "|" + "|".join(["---"] * len(head)) + "|"]
            for d, row in zip(rows, vals):
                cells = [_fmt(v) for v in row] + [_fmt(base.get(d, math.nan))]
                lines.append("| " + " | ".join([d, *cells]) + " |")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _fmt(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "—"


def plot_round_losses(manifest: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Per domain, the eval-loss curve of each boosting round, rounds laid end to end.

    Round k's curve starts where round k-1's steps ended; its ``loss_before`` (the
    loss with the fresh, zero-initialised stack) is marked at the round's start and
    discarded rounds are dashed.

    Args:
        manifest: a continual-run manifest.
        path: PNG to write.

    Returns:
        ``Path(path)``.
    """
    from matplotlib.figure import Figure

    domains = [d for d in manifest.get("domains_order", []) if manifest.get("domains", {}).get(d, {}).get("rounds")]
    domains += [d for d in manifest.get("domains", {}) if d not in domains and manifest["domains"][d].get("rounds")]
    if not domains:
        raise ValueError("the manifest has no trained round")
    key = plot_key("rounds", domains, [manifest["domains"][d]["rounds"] for d in domains])
    if png_is_current(path, key):
        return Path(path)
    cols = min(2, len(domains))
    nrows = math.ceil(len(domains) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat[len(domains):]:
        ax.set_visible(False)
    for ax, dom in zip(axes.flat, domains):
        offset = 0
        for rec in manifest["domains"][dom]["rounds"]:
            hist = [(int(s), float(v)) for s, v in rec.get("history") or []]
            line = "--" if rec.get("status") == "discarded" else "-"
            xs = [offset] + [offset + s for s, _ in hist]
            ys = [float(rec["loss_before"])] + [v for _, v in hist]
            (handle,) = ax.plot(xs, ys, line, marker=".", label=f"round {rec['round']} ({rec.get('status', '?')})")
            ax.plot([offset], [float(rec["loss_before"])], "o", mfc="none", ms=9, color=handle.get_color())
            offset = xs[-1]
        ax.set_title(f"{dom}: final {_final_loss(manifest['domains'][dom]):.4f}")
        ax.set_xlabel("step (rounds end to end; o = loss before the round)")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
    return _save(fig, path, key)


def _final_loss(entry: Mapping[str, Any]) -> float:
    frozen = [r["loss_after"] for r in entry["rounds"] if r.get("status") == "frozen"]
    return float(frozen[-1]) if frozen else float(entry["rounds"][0]["loss_before"])


def plot_experiment1(result: Any, path: str | os.PathLike[str]) -> Path:
    """Validation-loss curves of MoE-LoRA vs single LoRA (left) and train task loss (right).

    A dashed line marks single LoRA's final validation loss and a star the first
    step where MoE-LoRA reaches it.

    Args:
        result: an ``Experiment1Result`` or its ``to_dict()``.
        path: PNG to write.

    Returns:
        ``Path(path)``.
    """
    from matplotlib.figure import Figure

    d = result.to_dict() if hasattr(result, "to_dict") else result
    key = plot_key("experiment1", d)
    if png_is_current(path, key):
        return Path(path)
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    ax_val, ax_train = fig.subplots(1, 2)
    labels = {"moe": "MoE-LoRA", "lora": "single LoRA"}
    for arm, label in labels.items():
        a = d[arm]
        name = f"{label} ({a['trainable_params']:,} params, {a['seconds']:.0f}s)"
        if a["val_curve"]:
            ax_val.plot(*zip(*a["val_curve"]), marker="o", ms=3, label=name)
        if a["train_curve"]:
            ax_train.plot(*zip(*a["train_curve"]), label=label)
    lora_final = d["lora"]["final_val_loss"]
    ax_val.axhline(lora_final, ls="--", lw=1, color="gray", label=f"single LoRA final {lora_final:.4f}")
    reach = d.get("moe_reaches_lora_final_at")
    if reach is not None:
        y = dict((int(s), v) for s, v in d["moe"]["val_curve"])[int(reach)]
        ax_val.plot([reach], [y], "*", ms=14, color="crimson", label=f"MoE-LoRA reaches it at step {reach}")
    ax_val.set(title="validation loss", xlabel="step", ylabel="loss")
    ax_train.set(title="train task loss (no aux term)", xlabel="step", ylabel="loss")
    ax_val.legend(fontsize=7)
    ax_train.legend(fontsize=7)
    return _save(fig, path, key)
