"""Router quality against the oracle: per-domain AUROC / F1 and the share of the oracle's loss gain recovered.

What belongs here: pure tensor metrics on ``[N, D]`` predictions vs oracle targets
(torch only, no scikit-learn), and the composite checkpoint score.

* Positives of domain ``d`` are the rows whose oracle weight ``oracle_<d> > 0``
  (the soft-boosted 0.5 counts as on).
* AUROC is the rank statistic (Mann-Whitney U with mid-ranks for ties); NaN for a
  domain whose validation rows are all one class, left out of the mean.
* F1 thresholds the prediction at ``threshold`` (the router's decision threshold).
* Set metrics (the paper's checkpoint score): single-domain top-1 and mixed-set
  exact match against the oracle's sets (:func:`set_metrics`, :func:`paper_score`).
* Gain recovered = ``sum(base_loss - routed_loss) / sum(base_loss - oracle_loss)``
  over the evaluated rows (a ratio of sums: rows where the oracle gains nothing do
  not divide by ~0). 1.0 = the router is as good as the oracle, 0 = as the base.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores [N]`` for boolean ``positive [N]`` (NaN if one class)."""
    s, y = scores.double().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for v in torch.unique(s):  # mid-ranks for ties
        tie = s == v
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1(pred: torch.Tensor, positive: torch.Tensor) -> float:
    """F1 of boolean predictions; 1.0 when there are no positives and none predicted."""
    p, y = pred.bool().flatten(), positive.bool().flatten()
    tp = int((p & y).sum())
    fp, fn = int((p & ~y).sum()), int((~p & y).sum())
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _nanmean(xs: Sequence[float]) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return sum(vals) / len(vals) if vals else math.nan


def per_domain_metrics(pred: torch.Tensor, oracle: torch.Tensor, domains: Sequence[str],
                       threshold: float = 0.5) -> dict:
    """AUROC and F1 per domain and their means.

    Args:
        pred: predicted weights ``[N, D]``.
        oracle: oracle weights ``[N, D]`` (0 / 0.5 / 1); positive where > 0.
        domains: column names.
        threshold: a prediction >= this is "on".

    Returns:
        ``{"auroc": {d: x}, "f1": {d: x}, "mean_auroc": x, "mean_f1": x}``.
    """
    pos = oracle > 0
    au = {d: auroc(pred[:, j], pos[:, j]) for j, d in enumerate(domains)}
    f = {d: f1(pred[:, j] >= threshold, pos[:, j]) for j, d in enumerate(domains)}
    return {"auroc": au, "f1": f, "mean_auroc": _nanmean(list(au.values())), "mean_f1": _nanmean(list(f.values()))}


def gain_recovered(base_loss: torch.Tensor, oracle_loss: torch.Tensor, routed_loss: torch.Tensor) -> float:
    """``sum(base - routed) / sum(base - oracle)`` (NaN when the oracle gains nothing)."""
    gain = float((base_loss.double() - oracle_loss.double()).sum())
    if abs(gain) < 1e-12:
        return math.nan
    return float((base_loss.double() - routed_loss.double()).sum()) / gain


def composite_score(metrics: dict, val_bce: float) -> float:
    """Checkpoint score ``auroc_f1``: ``mean AUROC + mean F1 - val BCE`` (higher is better; NaN AUROC counts 0.5)."""
    au = metrics["mean_auroc"]
    return (0.5 if math.isnan(au) else au) + metrics["mean_f1"] - val_bce


def set_metrics(pred: torch.Tensor, oracle: torch.Tensor, threshold: float = 0.5) -> dict:
    """The paper's two routing accuracies (3.6) against the oracle's sets of domains.

    A row's oracle set is its domains with ``oracle > 0``; its predicted set those with
    ``pred >= threshold``.

    Args:
        pred: predicted weights ``[N, D]``.
        oracle: oracle weights ``[N, D]``.
        threshold: the router's decision threshold.

    Returns:
        ``single_top1``: over rows whose oracle set is one domain, the share whose
        highest prediction is that domain; ``mixed_set_match``: over rows whose oracle
        set has two or more domains, the share whose predicted set equals it exactly
        (NaN when there are no such rows); ``n_single``, ``n_mixed``.
    """
    pos = oracle > 0
    size = pos.sum(1)
    single, mixed = size == 1, size >= 2
    top1 = math.nan
    if bool(single.any()):
        top1 = float((pred[single].argmax(1) == pos[single].float().argmax(1)).double().mean())
    match = math.nan
    if bool(mixed.any()):
        match = float(((pred[mixed] >= threshold) == pos[mixed]).all(1).double().mean())
    return {"single_top1": top1, "mixed_set_match": match, "n_single": int(single.sum()),
            "n_mixed": int(mixed.sum())}


def paper_score(metrics: dict, val_bce: float) -> float:
    """Checkpoint score ``paper`` (3.6): ``0.50 single_top1 + 0.35 mixed_set_match - 0.15 val BCE``.

    A term without rows (NaN: no single-domain or no mixed validation row) counts 0; it is
    the same for every epoch of one training, so it never changes which epoch wins.
    """
    single, mixed = metrics["single_top1"], metrics["mixed_set_match"]
    return (0.50 * (0.0 if math.isnan(single) else single) + 0.35 * (0.0 if math.isnan(mixed) else mixed)
            - 0.15 * val_bce)
