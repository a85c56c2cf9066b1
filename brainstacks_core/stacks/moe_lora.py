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

    def forward(self, x: torch.Tensor, basis: torch.Tensor | None = None,
                out_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Compute the delta for flattened tokens.

        The router, the noise projection (training only) and every expert's A read ``x`` in
        one matmul with their weights stacked (``[E + E + E*r, in]``), and every scalar factor
        (rsLoRA scale, the stack's weight) is applied to the ``[N, E]`` gates, not to the
        ``[N, out]`` result: per wrapped projection that is one read of ``x`` and no
        full-width elementwise pass beyond PEFT's own.

        Args:
            x: ``[N, in]`` inputs.
            basis: ``[K, out]`` orthonormal null-space rows V, or None.
            out_scale: extra factor on the delta, a float or ``[N, 1]`` per row (the
                stack's weight in routed inference).

        Returns:
            ``[N, out]`` delta (already scaled). ``self.last_aux_loss`` is set to
            the load-balance loss of this call (with gradient in training).
        """
        cfg = self.config
        n, e = x.shape[0], cfg.num_experts
        noisy = self.training and cfg.noisy_router
        parts = [self.router.weight, self.noise_linear.weight] if noisy else [self.router.weight]
        w = torch.cat(parts + [self.lora_A.reshape(-1, self.in_features)])  # (E [+ E] + E*r, in)
        z = F.linear(x, w)  # (N, E [+ E] + E*r)
        logits = z[:, :e]
        if noisy:
            logits = logits + F.softplus(z[:, e:2 * e]) * torch.randn_like(logits)
        h = z[:, len(parts) * e:]  # (N, E*r)
        gates, top_idx = top_k_gates(logits, cfg.top_k)  # (N, E)
        self.last_aux_loss = (load_balance_loss(logits, top_idx, cfg.num_experts, self.token_mask)
                              if self.training else None)
        gates = gates * (out_scale * cfg.scale)  # every scalar factor on the small gates
        h = (h.view(n, e, cfg.rank) * gates.unsqueeze(-1)).view(n, -1)  # gates in rank space
        b = project_out(self.lora_B.reshape(-1, self.out_features), basis)  # (E*r, out)
        return h @ b  # (N, out)
