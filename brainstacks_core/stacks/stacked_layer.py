"""StackedMoELoRALayer: a frozen base projection plus additive MoE-LoRA stacks.

Brainstacks section 3.2::

    y = base(x) + sum_s w_s * P_s(delta_s(x)) + w_a * P_a(delta_active(x))

where ``P`` is the stack's own null-space projection (identity when it has none).

* Frozen stacks are plain tensors, not parameters: no optimizer can see them.
  Every frozen stack with a non-zero weight is computed in ONE batched pass
  (concatenated A, router and projected B), instead of the paper's one stack at
  a time with CPU<->GPU shuttling. The concatenation is cached per active set.
* Weight 0 removes a stack from the concatenation: it is skipped, not multiplied.
* The active stack is a trainable :class:`MoELoRADelta`; its null-space basis is
  applied by the same :func:`project_out` as for frozen stacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from brainstacks_core.stacks.moe_lora import MoELoRAConfig, MoELoRADelta, project_out, top_k_gates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrozenStackWeights:
    """One frozen stack's tensors for one projection (read-only by convention).

    Attributes:
        lora_A: ``[E, r, in]``.
        lora_B: ``[E, r, out]`` as trained (before projection).
        router: ``[E, in]`` router weight.
        basis: ``[K, out]`` orthonormal null-space rows V, or None.
        config: the stack's MoE-LoRA configuration.
    """

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    router: torch.Tensor
    basis: torch.Tensor | None
    config: MoELoRAConfig

    def projected_B(self) -> torch.Tensor:
        """``[E*r, out]`` B with the null-space projection folded in (float32)."""
        b = self.lora_B.float().reshape(-1, self.lora_B.shape[-1])
        return project_out(b, None if self.basis is None else self.basis.float())


class StackedMoELoRALayer(nn.Module):
    """Wraps a projection (``nn.Linear`` or bitsandbytes ``Linear4bit``) as ``base_layer``.

    Args:
        base_layer: the original projection; its parameters are frozen.
        config: MoE-LoRA configuration of stacks added to this layer.
    """

    def __init__(self, base_layer: nn.Module, config: MoELoRAConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.in_features: int = base_layer.in_features
        self.out_features: int = base_layer.out_features
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.active: MoELoRADelta | None = None
        self.active_id: str | None = None
        self.active_basis: torch.Tensor | None = None
        self.frozen: dict[str, FrozenStackWeights] = {}
        self.weights: dict[str, float] = {}
        self.frozen_mode = "batched"  # "loop" = one stack at a time (the paper's way; benchmarks only)
        self._cache: tuple | None = None

    # ------------------------------------------------------------------ stacks
    def add_active(self, stack_id: str, basis: torch.Tensor | None = None) -> MoELoRADelta:
        """Create a fresh trainable stack (an exact no-op until trained)."""
        if self.active is not None:
            raise RuntimeError(f"layer already has an active stack {self.active_id!r}; freeze or drop it first")
        if stack_id in self.frozen:
            raise ValueError(f"stack id {stack_id!r} is already frozen in this layer")
        ref = next(self.base_layer.parameters(), None)
        device = ref.device if ref is not None else None
        self.active = MoELoRADelta(self.in_features, self.out_features, self.config).to(device)
        self.active_id = stack_id
        self.weights[stack_id] = 1.0
        self.set_active_basis(basis)
        return self.active

    def set_active_basis(self, basis: torch.Tensor | None) -> None:
        """Set the active stack's null-space rows V ``[K, out]`` (orthonormal)."""
        if basis is not None and (basis.ndim != 2 or basis.shape[1] != self.out_features):
            raise ValueError(f"basis must be [K, {self.out_features}], got {tuple(basis.shape)}")
        self.active_basis = None if basis is None else basis.detach().float().contiguous()

    def freeze_active(self) -> str:
        """Turn the active stack into a frozen one (stored in ``config.frozen_dtype``)."""
        if self.active is None:
            raise RuntimeError("no active stack to freeze")
        dtype = self.config.torch_frozen_dtype
        a = self.active
        self.frozen[self.active_id] = FrozenStackWeights(
            lora_A=a.lora_A.detach().to(dtype).clone(),
            lora_B=a.lora_B.detach().to(dtype).clone(),
            router=a.router.weight.detach().to(dtype).clone(),
            basis=None if self.active_basis is None else self.active_basis.clone(),
            config=self.config,
        )
        stack_id = self.active_id
        self.active, self.active_id, self.active_basis = None, None, None
        self._cache = None
        return stack_id

    def drop_active(self) -> None:
        """Discard the active stack without freezing it."""
        if self.active_id is not None:
            self.weights.pop(self.active_id, None)
        self.active, self.active_id, self.active_basis = None, None, None

    def add_frozen(self, stack_id: str, weights: FrozenStackWeights) -> None:
        """Attach a frozen stack (e.g. loaded from a stack file)."""
        if stack_id in self.frozen or stack_id == self.active_id:
            raise ValueError(f"stack id {stack_id!r} already present in this layer")
        mine, theirs = self.config, weights.config
        for key in ("num_experts", "rank", "alpha", "top_k"):
            if getattr(mine, key) != getattr(theirs, key):
                raise ValueError(f"stack {stack_id!r} was trained with {key}={getattr(theirs, key)}, but this "
                                 f"layer computes stacks with {key}={getattr(mine, key)}")
        e, r, n_in = weights.lora_A.shape
        if (e, r) != (self.config.num_experts, self.config.rank) or n_in != self.in_features:
            raise ValueError(f"stack {stack_id!r}: A shape {tuple(weights.lora_A.shape)} does not fit this layer")
        if weights.lora_B.shape[-1] != self.out_features:
            raise ValueError(f"stack {stack_id!r}: B shape {tuple(weights.lora_B.shape)} does not fit this layer")
        self.frozen[stack_id] = weights
        self.weights.setdefault(stack_id, 1.0)
        self._cache = None

    def remove_frozen(self, stack_id: str) -> None:
        self.frozen.pop(stack_id)
        self.weights.pop(stack_id, None)
        self._cache = None

    def set_weights(self, weights: dict[str, float]) -> None:
        """Set per-stack weights (unknown ids are ignored; 0 skips the stack)."""
        for sid, w in weights.items():
            if sid in self.frozen or sid == self.active_id:
                self.weights[sid] = float(w)

    # ----------------------------------------------------------------- forward
    def _frozen_tensors(self, ids: tuple[str, ...], device: torch.device, dtype: torch.dtype) -> tuple:
        key = (ids, device, dtype)
        if self._cache is None or self._cache[0] != key:
            stacks = [self.frozen[i] for i in ids]
            a_cat = torch.cat([s.lora_A.reshape(-1, self.in_features) for s in stacks]).to(device, dtype)
            r_cat = torch.cat([s.router for s in stacks]).to(device, dtype)
            b_cat = torch.cat([s.projected_B() for s in stacks]).to(device, dtype)
            self._cache = (key, a_cat, r_cat, b_cat)
        return self._cache[1:]

    def _frozen_delta(self, x: torch.Tensor, ids: tuple[str, ...]) -> torch.Tensor:
        """All frozen stacks with non-zero weight in one pass. ``x``: ``[N, in]`` -> ``[N, out]``."""
        n, s = x.shape[0], len(ids)
        e, r, k = self.config.num_experts, self.config.rank, self.config.top_k
        a_cat, r_cat, b_cat = self._frozen_tensors(ids, x.device, x.dtype)
        logits = F.linear(x, r_cat).view(n, s, e)  # (N, S, E)
        top_vals, top_idx = logits.topk(k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top_idx, torch.softmax(top_vals, dim=-1))
        w = torch.tensor([self.weights[i] for i in ids], device=x.device, dtype=x.dtype)
        gates = gates * (w * self.config.scale).view(1, s, 1)  # (N, S, E)
        h = F.linear(x, a_cat).view(n, s, e, r) * gates.unsqueeze(-1)  # gates in rank space
        return h.view(n, s * e * r) @ b_cat  # (N, out)

    def _frozen_delta_loop(self, x: torch.Tensor, ids: tuple[str, ...]) -> torch.Tensor:
        """Reference path: one frozen stack at a time (the paper's implementation)."""
        out = torch.zeros(x.shape[0], self.out_features, device=x.device, dtype=x.dtype)
        for sid in ids:
            st = self.frozen[sid]
            a = st.lora_A.to(x.device, x.dtype)
            gates, _ = top_k_gates(F.linear(x, st.router.to(x.device, x.dtype)), self.config.top_k)
            h = F.linear(x, a.reshape(-1, self.in_features)).view(x.shape[0], self.config.num_experts, -1)
            h = (h * gates.unsqueeze(-1)).reshape(x.shape[0], -1)
            out = out + self.weights[sid] * self.config.scale * (h @ st.projected_B().to(x.device, x.dtype))
        return out

    def active_frozen_ids(self) -> tuple[str, ...]:
        """Frozen stacks that take part in the forward pass (weight != 0), in insertion order."""
        return tuple(i for i in self.frozen if self.weights.get(i, 1.0) != 0.0)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x``: ``[..., in]`` -> ``[..., out]``."""
        y = self.base_layer(x, *args, **kwargs)
        flat = x.reshape(-1, self.in_features)
        delta = None
        ids = self.active_frozen_ids()
        if ids:
            fn = self._frozen_delta if self.frozen_mode == "batched" else self._frozen_delta_loop
            delta = fn(flat, ids)
        if self.active is not None and self.weights.get(self.active_id, 1.0) != 0.0:
            basis = None if self.active_basis is None else self.active_basis.to(flat.device)
            d = self.active(flat.to(self.active.lora_A.dtype), basis) * self.weights[self.active_id]
            delta = d if delta is None else delta + d.to(delta.dtype)
        if delta is None:
            return y
        return y + delta.view(*y.shape[:-1], self.out_features).to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, frozen={len(self.frozen)}, "
                f"active={self.active_id!r}, E={self.config.num_experts}, r={self.config.rank}")
