"""Routing heatmap: mean routed weight per (prompt source domain x stack domain) (issue 10, item 5).

Same conventions as :mod:`brainstacks_core.reporting.plots`: matplotlib imported
inside the function, object API on an Agg canvas, PNG written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from brainstacks_core.files import png_is_current
from brainstacks_core.reporting.plots import _save, plot_key


def routing_matrix(source_domains: Sequence[str], weights: torch.Tensor,
                   domains: Sequence[str]) -> tuple[list[str], list[list[float]], list[int]]:
    """Mean weight of each stack domain over the prompts of each source domain.

    Args:
        source_domains: ``N`` nominal domains of the prompts.
        weights: routed weights ``[N, D]``.
        domains: the ``D`` stack domains (columns of ``weights``).

    Returns:
        ``(rows, values, counts)``: source domains (``domains`` order first, then any
        others as first seen), ``values[i][j]`` = mean weight of ``domains[j]`` over
        the prompts of ``rows[i]``, and the prompt count of each row.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (len(source_domains), len(domains)):
        raise ValueError(f"weights {tuple(w.shape)} do not match {len(source_domains)} prompts x {len(domains)}")
    present = list(dict.fromkeys(source_domains))
    rows = [d for d in domains if d in present] + [d for d in present if d not in domains]
    values, counts = [], []
    for r in rows:
        sel = torch.tensor([s == r for s in source_domains])
        values.append(w[sel].mean(0).tolist())
        counts.append(int(sel.sum()))
    return rows, values, counts


def plot_routing_heatmap(source_domains: Sequence[str], weights: torch.Tensor, domains: Sequence[str],
                         path: str | os.PathLike[str], title: str = "routed weight") -> Path:
    """PNG heatmap of :func:`routing_matrix` (cells annotated, colour scale 0..1).

    Returns:
        ``Path(path)``.
    """
    import numpy as np
    from matplotlib.figure import Figure

    rows, values, counts = routing_matrix(source_domains, weights, domains)
    key = plot_key("routing-heatmap", rows, values, counts, list(domains), title)
    if png_is_current(path, key):
        return Path(path)
    fig = Figure(figsize=(max(3.5, 0.9 * len(domains) + 2.2), max(2.6, 0.55 * len(rows) + 1.6)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.array(values, dtype=float).reshape(len(rows), len(domains)), cmap="viridis",
                      vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(domains)), [f"{d} stacks" for d in domains], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{r} (n={n})" for r, n in zip(rows, counts)])
    ax.set_xlabel("stack domain")
    ax.set_ylabel("prompt source domain")
    ax.set_title(title)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if v > 0.5 else "white")
    fig.colorbar(image, ax=ax, label="mean weight", shrink=0.8)
    return _save(fig, path, key)
