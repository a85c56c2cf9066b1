"""What routed evaluation needs from a router, and a fixed router for tests and ablations.

The meta-router itself lives in ``brainstacks_core/routing``; evaluation only
asks it for per-prompt domain weights (:class:`Router`) and turns them into
per-stack weights with the run's ``domain -> stack ids`` map.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence, runtime_checkable

import torch

from brainstacks_core.lineage.versioning import content_hash


@runtime_checkable
class Router(Protocol):
    """A router as routed evaluation sees it.

    Attributes:
        domains: the ``D`` domains whose weights :meth:`domain_weights` returns, in column order.
        version: catalog version of the router (part of every routed result's identity and lineage).
    """

    domains: list[str]
    version: str

    def domain_weights(self, prompts: list[str]) -> torch.Tensor:
        """Weights ``[B, D]`` for ``B`` prompts (0 = the domain's stacks are off)."""
        ...


class FixedRouter:
    """Routes every prompt to the same domains, or by a substring rule (tests, "forced" ablations).

    Args:
        domains: column order.
        weights: ``{domain: weight}`` used for every prompt not matched by ``rules``.
        rules: ``[(substring, {domain: weight}), ...]``: the first rule whose substring
            occurs in the prompt decides its weights.
    """

    def __init__(self, domains: Sequence[str], weights: Mapping[str, float],
                 rules: Sequence[tuple[str, Mapping[str, float]]] = ()) -> None:
        self.domains = list(domains)
        self.default = dict(weights)
        self.rules = [(s, dict(w)) for s, w in rules]
        self.version = "fixed-" + content_hash(self.domains, self.default, self.rules, length=12)

    def domain_weights(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for p in prompts:
            w = next((w for s, w in self.rules if s in p), self.default)
            rows.append([float(w.get(d, 0.0)) for d in self.domains])
        return torch.tensor(rows, dtype=torch.float32).reshape(len(prompts), len(self.domains))  # (B, D)


def stack_weights(router: Router, domain_stacks: Mapping[str, Sequence[str]], prompts: list[str],
                  decimals: int = 4) -> list[dict[str, float]]:
    """Per-prompt ``{stack_id: weight}``: each stack gets its domain's routed weight.

    Weights are rounded to ``decimals`` so identical routing decisions compare equal
    (they key the score cache and group requests into forward passes).
    """
    if not prompts:
        return []
    w = router.domain_weights(list(prompts)).detach().float().cpu()  # (B, D)
    if tuple(w.shape) != (len(prompts), len(router.domains)):
        raise ValueError(f"router returned weights of shape {tuple(w.shape)}, expected "
                         f"({len(prompts)}, {len(router.domains)})")
    out = []
    for row in w.tolist():
        weights = {}
        for d, x in zip(router.domains, row):
            for sid in domain_stacks.get(d, ()):
                weights[sid] = round(float(x), decimals)
        out.append(weights)
    return out
