"""Paired comparisons between modes on the same items, and what n can detect.

* :func:`mcnemar` — exact McNemar test on a binary metric (only discordant
  items carry information: base right / routed wrong and the reverse).
* :func:`paired_bootstrap` — for non-binary per-item scores (TruthfulQA MC2):
  resample items, p-value of the mean difference against 0.
* :func:`min_detectable_difference` — the smallest true difference the paired
  comparison detects at ``alpha`` with ``power``, given n and the per-item
  difference spread; and the planning value before any data (independent
  items at p = 0.5). At n = 200 that is ~0.14, so the paper's ±0.03 deltas
  cannot be told from noise.

Standard errors of the scores themselves are the harness's (closed form for means).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np


def mcnemar(a: Sequence[float], b: Sequence[float]) -> dict:
    """Exact two-sided McNemar test of paired binary outcomes.

    Args:
        a, b: per-item 0/1 outcomes of two modes on the same items (same order).

    Returns:
        ``{"n", "a_only", "b_only", "p_value", "diff"}`` with ``diff = mean(b) - mean(a)``.
    """
    x, y = np.asarray(a, dtype=float) > 0.5, np.asarray(b, dtype=float) > 0.5
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes differ in length: {x.shape} vs {y.shape}")
    n01, n10 = int((x & ~y).sum()), int((~x & y).sum())
    m, k = n01 + n10, min(n01, n10)
    p = 1.0 if m == 0 else min(1.0, 2.0 * sum(math.comb(m, i) for i in range(k + 1)) / 2.0 ** m)
    return {"test": "mcnemar-exact", "n": int(x.size), "a_only": n01, "b_only": n10, "p_value": p,
            "diff": float(y.mean() - x.mean()) if x.size else 0.0}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], iters: int = 1000, seed: int = 0) -> dict:
    """Two-sided paired bootstrap p-value of ``mean(b - a) != 0``.

    Resamples items with replacement; the p-value is the share of resampled mean
    differences, centred on the observed one, at least as far from 0 as observed.
    Memory: one ``[iters]`` float64 vector plus one ``[n]`` index vector at a time.
    """
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.size == 0:
        return {"test": "paired-bootstrap", "n": 0, "p_value": 1.0, "diff": 0.0}
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, d.size, d.size)].mean() for _ in range(iters)])
    obs = d.mean()
    p = float(((np.abs(means - obs) >= abs(obs) - 1e-12).sum() + 1) / (iters + 1)) if obs != 0 else 1.0
    return {"test": "paired-bootstrap", "n": int(d.size), "p_value": min(1.0, p), "diff": float(obs)}


def min_detectable_difference(n: int, sd_diff: float | None = None, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired test detects (normal approximation).

    Args:
        n: items compared.
        sd_diff: standard deviation of the per-item differences; ``None`` = the
            planning value ``sqrt(2 * 0.25)`` (independent modes, accuracy 0.5).
        alpha: two-sided level.
        power: probability of detecting a difference of that size.
    """
    if n <= 0:
        return float("inf")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    sd = math.sqrt(0.5) if sd_diff is None else sd_diff
    return z * sd / math.sqrt(n)


def compare(a: Sequence[float], b: Sequence[float], alpha: float = 0.05, power: float = 0.8,
            iters: int = 1000, seed: int = 0) -> dict:
    """The paired test that fits the scores (McNemar for 0/1, bootstrap otherwise) and the MDD at this n."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    out = mcnemar(x, y) if binary else paired_bootstrap(x, y, iters, seed)
    d = y - x
    sd = float(d.std(ddof=1)) if d.size > 1 else None
    out["mdd"] = min_detectable_difference(int(d.size), sd if sd else None, alpha, power)
    out["mdd_planning"] = min_detectable_difference(int(d.size), None, alpha, power)
    out["significant"] = bool(out["p_value"] < alpha)
    return out
