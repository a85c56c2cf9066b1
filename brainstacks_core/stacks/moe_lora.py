"""MoE-LoRA delta: E low-rank experts behind a Shazeer noisy top-k router.

Brainstacks (arXiv 2604.01152) section 3.1. One ``MoELoRADelta`` produces the
additive correction of one stack for one linear projection::

    delta(x) = scale * sum_e g_e(x) * (x A_e^T) B_e,   scale = alpha / sqrt(r)  (rsLoRA)

Design (differs from the paper's reference code on purpose):

* All experts in two matmuls and no ``[tokens, experts, out]`` intermediate: the
  gates are applied in rank space, ``h = x A_cat^T`` is ``[N, E*r]``, and one
  matmul with ``B_cat`` (``[E*r, out]``) mixes and projects at once.
* The load-balance loss is built from the differentiable router probabilities,
  so it does train the router (the reference implementation detached them).
* The null-space projection ``d - (d V^T) V`` is linear in ``d``, so it is folded
  into ``B``: ``B_eff = B - (B V^T) V``. Training and inference use the same
  function (:func:`project_out`); frozen stacks cache ``B_eff`` once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from brainstacks_core.stacks.config import DEFAULT_TARGETS, MoELoRAConfig

__all__ = ["DEFAULT_TARGETS", "MoELoRAConfig", "MoELoRADelta", "load_balance_loss", "project_out", "top_k_gates"]


def project_out(b: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Remove the span of ``basis`` from the rows of ``b``: ``b - (b V^T) V``.

    Applied to B, this equals projecting every output ``d = h B`` with (I - V^T V).

    Args:
        b: ``[..., out]`` rows to project (an expert's B, or outputs).
        basis: ``[K, out]`` orthonormal rows V, or None for no projection.

    Returns:
        ``[..., out]`` with no component along any row of V.
    """
    if basis is None or basis.numel() == 0:
        return b
    basis = basis.to(b.dtype)
    return b - (b @ basis.T) @ basis


def top_k_gates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax over the top-k logits.

    Args:
        logits: ``[N, E]`` router logits.
        k: experts kept per row.

    Returns:
        gates ``[N, E]`` (exactly k non-zeros per row, summing to 1) and the
        top-k indices ``[N, k]``.
    """
    top_vals, top_idx = logits.topk(k, dim=-1)  # (N, k)
    gates = torch.zeros_like(logits).scatter(-1, top_idx, torch.softmax(top_vals, dim=-1))
    return gates, top_idx


def load_balance_loss(logits: torch.Tensor, top_idx: torch.Tensor, num_experts: int,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's load-balance loss ``N * sum_e P(e) * f(e)`` (eq. 7) over the real tokens.

    ``P(e)`` is the mean router probability of expert e (differentiable, so the
    gradient reaches the router) and ``f(e)`` the fraction of tokens dispatched to
    expert e (no gradient). With top-k routing every token is dispatched k times, so
    ``sum_e f(e) = k`` and the loss is k at perfect balance (2.0 at the paper's top-2),
    up to ``k * N / ...`` when the router collapses.

    Padding is excluded with a masked mean, never boolean indexing: ``logits[mask]``
    has a data-dependent shape and forces a host sync in every wrapped projection
    (about 1,200 per optimizer step at TinyLlama with checkpointing); the weighted
    sums below keep every shape static, so neither forward nor backward syncs.

    Args:
        logits: ``[T, E]`` router logits (with noise in training).
        top_idx: ``[T, k]`` chosen experts.
        num_experts: E (the paper's N).
        mask: ``[T]`` (or any shape with T elements) true at real tokens; padding
            positions take no part. None: every row counts.

    Returns:
        Scalar loss (0 with gradient if no token is real).
    """
    t, k = top_idx.shape
    if mask is None:
        w = torch.ones(t, device=logits.device, dtype=torch.float32)
    else:
        if mask.numel() != logits.shape[0]:
            raise ValueError(f"token mask has {mask.numel()} entries for {logits.shape[0]} router rows")
        w = mask.reshape(-1).to(device=logits.device, dtype=torch.float32, non_blocking=True)  # (T,)
    real = w.sum().clamp_min(1.0)  # a 0-d tensor: stays on the device
    probs = torch.softmax(logits.float(), dim=-1)  # (T, E)
    p_mean = (probs * w.unsqueeze(-1)).sum(dim=0) / real  # (E,)
    counts = torch.zeros(num_experts, device=logits.device, dtype=torch.float32)
    counts.scatter_add_(0, top_idx.reshape(-1), w.repeat_interleave(k))  # dispatches per expert
    f = counts / real  # (E,) fraction of real tokens sent to e; sums to k
    return num_experts * torch.sum(f * p_mean)


class MoELoRADelta(nn.Module):
    """The trainable delta of one stack on one projection.

    Args:
        in_features: input width of the wrapped projection.
        out_features: output width of the wrapped projection.
        config: the stack's MoE-LoRA configuration.

    Parameters:
        lora_A: ``[E, r, in]`` Kaiming-uniform (as ``nn.Linear(in, r)``).
        lora_B: ``[E, r, out]`` zeros, so a new stack is an exact no-op.
        router.weight: ``[E, in]`` N(0, router_init_std).
        noise_linear.weight: ``[E, in]`` zeros (softplus(0) ~ 0.69 noise std at start).
    """

    def __init__(self, in_features: int, out_features: int, config: MoELoRAConfig) -> None:
        super().__init__()
        self.config = config
        self.in_features, self.out_features = in_features, out_features
        e, r = config.num_experts, config.rank
        self.lora_A = nn.Parameter(torch.empty(e, r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(e, r, out_features))
        self.router = nn.Linear(in_features, e, bias=False)
        self.noise_linear = nn.Linear(in_features, e, bias=False)
        self.last_aux_loss: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None  # [N] real tokens of the next forwards (set by the trainer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for a in self.lora_A:  # same init as nn.Linear(in, r).weight, per expert
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        nn.init.normal_(self.router.weight, std=self.config.router_init_std)
        nn.init.zeros_(self.noise_linear.weight)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in] -> [N, E]``; Shazeer noise only in training mode."""
        logits = self.router(x)
        if self.training and self.config.noisy_router:
            logits = logits + F.softplus(self.noise_linear(x)) * torch.randn_like(logits)
        return logits

    def forward(self, x: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the delta for flattened tokens.

        Args:
            x: ``[N, in]`` inputs.
            basis: ``[K, out]`` orthonormal null-space rows V, or None.

        Returns:
            ``[N, out]`` delta (already scaled). ``self.last_aux_loss`` is set to
            the load-balance loss of this call (with gradient in training).
        """
        cfg = self.config
        n = x.shape[0]
        logits = self.router_logits(x)  # (N, E)
        gates, top_idx = top_k_gates(logits, cfg.top_k)  # (N, E)
        self.last_aux_loss = (load_balance_loss(logits, top_idx, cfg.num_experts, self.token_mask)
                              if self.training else None)
        h = F.linear(x, self.lora_A.reshape(-1, self.in_features))  # (N, E*r)
        h = (h.view(n, cfg.num_experts, cfg.rank) * gates.unsqueeze(-1)).view(n, -1)  # gates in rank space
        b = project_out(self.lora_B.reshape(-1, self.out_features), basis)  # (E*r, out)
        return (h @ b) * cfg.scale  # (N, out)
