"""Baselines the meta-router is compared with on the same split (issue 10, item 3).

* Label router: one-hot of the prompt's nominal ``source_domain`` (what routing
  by dataset label would do).
* Linear probe: logistic regression (one independent sigmoid per domain) on the
  mean-pooled base features, trained in torch with full-batch L-BFGS on the same
  blended targets as the router.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def label_weights(source_domains: Sequence[str], domains: Sequence[str]) -> torch.Tensor:
    """One-hot ``[N, D]`` of each row's source domain (all zeros for a domain not in ``domains``).

    A cross-domain row (``"a+b"``, :mod:`~brainstacks_core.routing.cross_pairs`) is two-hot.
    """
    col = {d: j for j, d in enumerate(domains)}
    w = torch.zeros(len(source_domains), len(domains))
    for i, s in enumerate(source_domains):
        for part in str(s).split("+"):
            if part in col:
                w[i, col[part]] = 1.0
    return w


class LinearProbe(nn.Module):
    """``sigmoid(standardise(x) @ W + b)``: ``[N, H] -> [N, D]``; mean/std fixed from the training rows."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_domains: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.linear = nn.Linear(mean.numel(), num_domains)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear((pooled.float() - self.mean) / self.std))


def train_linear_probe(pooled: torch.Tensor, targets: torch.Tensor, l2: float = 1e-3, steps: int = 100,
                       seed: int = 0) -> LinearProbe:
    """Fit a :class:`LinearProbe` on ``pooled [N, H]`` and soft targets ``[N, D]`` (BCE + L2 on W).

    Full-batch L-BFGS (the problem is convex): deterministic for a given seed.
    """
    x = pooled.float()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(mean, std, targets.shape[1])
    opt = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    xs, y = (x - mean) / std, targets.float()

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(probe.linear(xs), y)
        loss = loss + l2 * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe.eval()
