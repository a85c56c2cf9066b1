"""The paper's Figs. 4-10 as PNGs: ungated interference, the null-space effect, expert use and the subspaces.

What belongs here: the values each figure plots (plain lists, so tests recompute them) and
the drawing. Conventions of :mod:`brainstacks_core.reporting.plots`: matplotlib imported inside
the functions, object API on an Agg canvas, atomic PNGs carrying the hash of their inputs
(:func:`~brainstacks_core.reporting.plots.plot_key`), so an unchanged figure is not redrawn
(:func:`~brainstacks_core.files.png_is_current`).

* Figs. 4/5: ungated forgetting matrix of the null-space run and of the ablation.
* Fig. 6: left, ``NS - NoNS`` per cell (green: the null space reduced interference); right, the
  first domain's ungated loss over sequential training in both runs.
* Fig. 7: mean inner-router gate per expert and domain (``1/E`` is uniform use).
* Fig. 8: overlap (mean principal-angle cosine) between domains' directions, mean over layers.
* Fig. 9: singular-value spectrum per domain: energy share ``s_i^2 / sum s^2`` of each of the
  top-k directions, mean over layers.
* Fig. 10: the overlap per decoder block, one line per domain pair.

``subspaces`` below is ``{domain: load_subspace(file)}`` (:mod:`.subspace`).
"""

from __future__ import annotations

import math
import os
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

import torch

from brainstacks_core.files import png_is_current
from brainstacks_core.reporting.paper_tables import forgetting_deltas, ungated
from brainstacks_core.reporting.plots import _save, forgetting_matrix, plot_key
from brainstacks_core.reporting.subspace import block_index, principal_cosines


# ------------------------------------------------------------------ values
def expert_usage(subspaces: Mapping[str, dict]) -> tuple[list[str], list[list[float]]]:
    """Per domain, the mean gate of each expert over its stacks and layers. Returns ``(domains, [D][E])``."""
    rows = []
    for sub in subspaces.values():
        use = [t["expert_usage"] for t in sub["layers"].values() if "expert_usage" in t]  # each [S, E]
        rows.append(torch.cat(use).mean(0).tolist() if use else [])
    return list(subspaces), rows


def spectra(subspaces: Mapping[str, dict]) -> dict[str, list[float]]:
    """Per domain, the energy share ``s_i^2 / sum_j s_j^2`` of direction i, averaged over the layers that have it."""
    out = {}
    for dom, sub in subspaces.items():
        shares = []
        for t in sub["layers"].values():
            s2 = t["singular_values"].double() ** 2
            if s2.numel() and s2.sum() > 0:
                shares.append((s2 / s2.sum()).tolist())
        k = max((len(s) for s in shares), default=0)
        out[dom] = [sum(s[i] for s in shares if len(s) > i) / sum(1 for s in shares if len(s) > i) for i in range(k)]
    return out


def layer_overlaps(subspaces: Mapping[str, dict]) -> dict[tuple[str, str], dict[str, float]]:
    """Per domain pair and stacked layer both measured, the mean principal-angle cosine of their directions."""
    out = {}
    for a, b in combinations(subspaces, 2):
        la, lb = subspaces[a]["layers"], subspaces[b]["layers"]
        out[a, b] = {n: float(principal_cosines(la[n]["directions"], lb[n]["directions"]).mean())
                     for n in la if n in lb and la[n]["directions"].shape[0] and lb[n]["directions"].shape[0]}
    return out


def block_overlaps(subspaces: Mapping[str, dict]) -> tuple[list[int], dict[tuple[str, str], list[float]]]:
    """:func:`layer_overlaps` averaged over each decoder block's projections: ``(blocks, {pair: [per block]})``."""
    per_layer = layer_overlaps(subspaces)
    blocks = sorted({block_index(n) for v in per_layer.values() for n in v} - {None})
    out = {}
    for pair, vals in per_layer.items():
        out[pair] = []
        for blk in blocks:
            x = [v for n, v in vals.items() if block_index(n) == blk]
            out[pair].append(sum(x) / len(x) if x else math.nan)
    return blocks, out


def overlap_matrix(subspaces: Mapping[str, dict]) -> tuple[list[str], list[list[float]]]:
    """Domain x domain overlap, mean over layers (1 on the diagonal)."""
    doms, per_layer = list(subspaces), layer_overlaps(subspaces)
    mean = {p: (sum(v.values()) / len(v) if v else math.nan) for p, v in per_layer.items()}
    return doms, [[1.0 if a == b else mean.get((a, b), mean.get((b, a), math.nan)) for b in doms] for a in doms]


# ------------------------------------------------------------------ drawing
def _heat(ax, vals: list[list[float]], rows: list[str], cols: list[str], cmap: str, vmin: float, vmax: float,
          fmt: str = "{:.3f}"):
    import numpy as np

    arr = np.ma.masked_invalid(np.array(vals, dtype=float).reshape(len(rows), len(cols)))
    image = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(vals):
        for j, v in enumerate(row):
            if math.isfinite(v):
                r, g, b, _ = image.cmap(image.norm(v))  # text readable on the cell's own colour
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8,
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    return image


def plot_ungated(manifests: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Figs. 4/5: the ungated forgetting matrix of each run (label -> manifest), one shared colour scale."""
    from matplotlib.figure import Figure

    panels = {label: forgetting_matrix(m, "ungated") for label, m in manifests.items()}
    key = plot_key("paper-ungated", panels)
    if png_is_current(path, key):
        return Path(path)
    finite = [v for _, _, vals in panels.values() for row in vals for v in row if math.isfinite(v)]
    lo, hi = (min(finite), max(finite) + 1e-6) if finite else (0.0, 1.0)
    fig = Figure(figsize=(4.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (label, (rows, stages, vals)) in zip(axes, panels.items()):
        image = _heat(ax, vals, rows, [f"after {s}" for s in stages], "viridis_r", lo, hi)
        ax.set_title(f"ungated, {label}")
    fig.colorbar(image, ax=list(axes), label="held-out loss", shrink=0.8)
    return _save(fig, path, key)


def plot_null_space_effect(ns: Mapping[str, Any], nons: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Fig. 6: NS - NoNS per cell (left) and the first domain's ungated loss over the stages in both runs (right)."""
    from matplotlib.figure import Figure

    rows, stages, deltas = forgetting_deltas(ns, nons)
    first = rows[0]
    curves = {label: [ungated(m).get((first, s), math.nan) for s in stages]
              for label, m in (("null space", ns), ("no null space", nons))}
    key = plot_key("paper-ns-effect", rows, stages, deltas, curves)
    if png_is_current(path, key):
        return Path(path)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    span = max([abs(v) for row in deltas for v in row if math.isfinite(v)] + [1e-6])
    image = _heat(left, deltas, rows, [f"after {s}" for s in stages], "RdYlGn_r", -span, span, "{:+.3f}")
    left.set_title("NS − NoNS (green: NS reduced interference)")
    fig.colorbar(image, ax=left, label="loss difference", shrink=0.8)
    for label, ys in curves.items():
        right.plot(range(len(stages)), ys, marker="o", label=label)
    right.set_xticks(range(len(stages)), [f"after {s}" for s in stages], rotation=30, ha="right")
    right.set_ylabel(f"{first} ungated held-out loss")
    right.set_title(f"{first} over sequential training")
    right.legend(fontsize=8)
    return _save(fig, path, key)


def plot_expert_usage(subspaces: Mapping[str, dict], path: str | os.PathLike[str]) -> Path:
    """Fig. 7: heatmap of :func:`expert_usage` (domains x experts)."""
    from matplotlib.figure import Figure

    doms, vals = expert_usage(subspaces)
    key = plot_key("paper-experts", doms, vals)
    if png_is_current(path, key):
        return Path(path)
    e = max(len(v) for v in vals)
    fig = Figure(figsize=(max(3.5, 0.9 * e + 2.2), max(2.6, 0.55 * len(doms) + 1.6)), layout="constrained")
    ax = fig.subplots()
    flat = [v for row in vals for v in row]
    image = _heat(ax, vals, doms, [f"expert {i}" for i in range(e)], "viridis", min(flat), max(flat) + 1e-6)
    ax.set_title(f"mean inner-router gate (uniform = {1 / e:.3f})")
    fig.colorbar(image, ax=ax, label="mean gate", shrink=0.8)
    return _save(fig, path, key)


def plot_overlap_matrix(by_run: Mapping[str, Mapping[str, dict]], path: str | os.PathLike[str]) -> Path:
    """Fig. 8: :func:`overlap_matrix` as a heatmap (0 = orthogonal), one panel per run (label -> subspaces)."""
    from matplotlib.figure import Figure

    panels = {label: overlap_matrix(subs) for label, subs in by_run.items()}
    key = plot_key("paper-overlap", panels)
    if png_is_current(path, key):
        return Path(path)
    n = max(len(d) for d, _ in panels.values())
    fig = Figure(figsize=(len(panels) * max(3.5, 0.9 * n + 1.8) + 1.0, max(2.8, 0.6 * n + 1.6)), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (label, (doms, vals)) in zip(axes, panels.items()):
        image = _heat(ax, vals, doms, doms, "magma", 0.0, 1.0, "{:.2f}")
        ax.set_title(f"{label}: mean cos, all layers")
    fig.colorbar(image, ax=list(axes), label="mean principal-angle cosine", shrink=0.8)
    return _save(fig, path, key)


def plot_spectra(subspaces: Mapping[str, dict], path: str | os.PathLike[str]) -> Path:
    """Fig. 9: :func:`spectra`, one line per domain (log scale)."""
    from matplotlib.figure import Figure

    data = spectra(subspaces)
    key = plot_key("paper-spectra", data)
    if png_is_current(path, key):
        return Path(path)
    fig = Figure(figsize=(5.4, 3.6), layout="constrained")
    ax = fig.subplots()
    for dom, ys in data.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=dom)
    ax.set_yscale("log")
    ax.set_xticks(range(1, max((len(y) for y in data.values()), default=0) + 1))
    ax.set_xlabel("direction (by singular value)")
    ax.set_ylabel("energy share s²/Σs² (mean over layers)")
    ax.set_title("singular-value spectrum per domain")
    ax.legend(fontsize=8)
    return _save(fig, path, key)


def plot_block_overlaps(by_run: Mapping[str, Mapping[str, dict]], path: str | os.PathLike[str]) -> Path:
    """Fig. 10: :func:`block_overlaps` per run (label -> subspaces), one line per domain pair over the blocks
    (the first run solid, the others dashed)."""
    from matplotlib.figure import Figure

    data = {label: block_overlaps(subs) for label, subs in by_run.items()}
    key = plot_key("paper-block-overlap", [[label, b, [[list(p), v] for p, v in d.items()]]
                                           for label, (b, d) in data.items()])
    if png_is_current(path, key):
        return Path(path)
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for i, (label, (blocks, pairs)) in enumerate(data.items()):
        for (a, b), ys in pairs.items():
            ax.plot(blocks, ys, marker="o", markersize=3, linestyle="-" if i == 0 else "--",
                    label=f"{a} / {b} ({label})")
        ax.set_xticks(blocks)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("mean principal-angle cosine")
    ax.set_title("per-layer overlap between domains' directions")
    ax.legend(fontsize=7)
    return _save(fig, path, key)
