"""StackedMoELoRALayer: a frozen base projection plus additive MoE-LoRA stacks.

Brainstacks section 3.2::

    y = base(x) + sum_s w_s * P_s(delta_s(x)) + w_a * P_a(delta_active(x))

where ``P`` is the stack's own null-space projection (identity when it has none).

* Frozen stacks live in a :class:`~brainstacks_core.stacks.frozen_bank.FrozenBank`:
  one concatenated buffer per part, held once, with B's projection folded in.
  Plain tensors, not parameters: no optimizer can see them.
* Every frozen stack that takes part is computed in as few batched passes as
  there are contiguous runs of such stacks (one pass when all take part), over
  ``narrow`` views of the buffers. A stack whose weight is 0 (for every row) is
  in no run: its tensors are never read, it is skipped, not multiplied by zero.
  Changing the weights builds nothing but the small weight tensors below.
* Weights: a dict (one number per stack, :meth:`set_weights`) or per row
  (:meth:`set_row_weights`, ``[B, stacks]``, one row per sequence, broadcast
  over its tokens). Either way the weight tensor is built once per set call on
  the layer's device (``[S]`` fp32, or ``[B, S]``), never per forward.
* The active stack is a trainable :class:`MoELoRADelta`; its null-space basis is
  moved to the layer's device once, when set, and applied by the same
  :func:`project_out` as for frozen stacks.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from brainstacks_core.stacks.frozen_bank import FrozenBank, FrozenStackWeights, contiguous_runs
from brainstacks_core.stacks.moe_lora import MoELoRAConfig, MoELoRADelta, project_out, top_k_gates

__all__ = ["FrozenStackWeights", "StackedMoELoRALayer"]
log = logging.getLogger(__name__)


class StackedMoELoRALayer(nn.Module):
    """Wraps a projection (``nn.Linear`` or bitsandbytes ``Linear4bit``) as ``base_layer``.

    Args:
        base_layer: the original projection; its parameters are frozen.
        config: MoE-LoRA configuration of stacks added to this layer.

    Attributes:
        frozen: read-only mapping ``stack_id -> FrozenStackWeights`` (views of the bank).
        frozen_mode: ``"batched"`` (default) or ``"loop"`` (one stack at a time, the paper's way;
            benchmarks and reference tests).
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
        self.register_buffer("active_basis", None, persistent=False)  # [K, out] fp32; follows .to()
        self.frozen = FrozenBank(self.in_features, self.out_features, config)
        self._weights: dict[str, float] = {}
        self.frozen_mode = "batched"
        self._rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # ([B, S] frozen, [B] active)
        self._plan: tuple[tuple[tuple[int, int], ...], bool] = ((), False)  # frozen runs, active on
        self._w: dict[tuple, torch.Tensor] = {}  # [S] weight * scale, per (device, dtype)

    def _apply(self, fn, recurse: bool = True):
        """``model.to(device)`` also moves the frozen bank, unless :meth:`FrozenBank.place` pinned it."""
        out = super()._apply(fn, recurse)
        if self.frozen.home is None and self.frozen.a is not None and self.frozen.device != self.device:
            self.frozen.place(self.device)
            self.frozen.home = None
        self._refresh()
        return out

    @property
    def device(self) -> torch.device:
        """The compute device (the base layer's)."""
        ref = next(self.base_layer.parameters(), None)
        return ref.device if ref is not None else torch.device("cpu")

    @property
    def weights(self) -> Mapping[str, float]:
        """The dict weights (read-only; change them with :meth:`set_weights`)."""
        return MappingProxyType(self._weights)

    # ------------------------------------------------------------------ stacks
    def add_active(self, stack_id: str, basis: torch.Tensor | None = None) -> MoELoRADelta:
        """Create a fresh trainable stack (an exact no-op until trained)."""
        if self.active is not None:
            raise RuntimeError(f"layer already has an active stack {self.active_id!r}; freeze or drop it first")
        if stack_id in self.frozen:
            raise ValueError(f"stack id {stack_id!r} is already frozen in this layer")
        self._no_rows("add an active stack")
        self.active = MoELoRADelta(self.in_features, self.out_features, self.config).to(self.device)
        self.active.train(self.training)  # a stack added to a model in eval mode adds no router noise
        self.active_id = stack_id
        self._weights[stack_id] = 1.0
        self.set_active_basis(basis)
        self._refresh()
        return self.active

    def set_active_basis(self, basis: torch.Tensor | None) -> None:
        """Set the active stack's null-space rows V ``[K, out]`` (orthonormal).

        Stored once as fp32 on the layer's device (Gemma-3-12B, K=64: 572 MB for
        all 336 projections), so no forward copies it.
        """
        if basis is not None and (basis.ndim != 2 or basis.shape[1] != self.out_features):
            raise ValueError(f"basis must be [K, {self.out_features}], got {tuple(basis.shape)}")
        self.active_basis = None if basis is None else basis.detach().to(self.device, torch.float32).contiguous()

    def freeze_active(self) -> str:
        """Turn the active stack into a frozen one (stored in ``config.frozen_dtype``, B projected)."""
        if self.active is None:
            raise RuntimeError("no active stack to freeze")
        self._no_rows("freeze the active stack")
        a = self.active
        b = project_out(a.lora_B.detach().float().reshape(-1, self.out_features), self.active_basis)
        self.frozen.add(self.active_id, FrozenStackWeights(
            lora_A=a.lora_A.detach(), lora_B=b, router=a.router.weight.detach(),
            basis=self.active_basis, config=self.config, noise=a.noise_linear.weight.detach()), self.device)
        stack_id = self.active_id
        self.active, self.active_id, self.active_basis = None, None, None
        self._refresh()
        return stack_id

    def drop_active(self) -> None:
        """Discard the active stack without freezing it."""
        if self.active_id is not None:
            self._no_rows("drop the active stack")
            self._weights.pop(self.active_id, None)
        self.active, self.active_id, self.active_basis = None, None, None
        self._refresh()

    def check_fits(self, stack_id: str, weights: FrozenStackWeights) -> None:
        """Raise ValueError when a stack's config or shapes do not fit this layer."""
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

    def add_frozen(self, stack_id: str, weights: FrozenStackWeights) -> None:
        """Attach a frozen stack (e.g. loaded from a stack file; its B already projected)."""
        if stack_id in self.frozen or stack_id == self.active_id:
            raise ValueError(f"stack id {stack_id!r} already present in this layer")
        self.check_fits(stack_id, weights)
        self._no_rows("add a frozen stack")
        self.frozen.add(stack_id, weights, self.device)
        self._weights.setdefault(stack_id, 1.0)
        self._refresh()

    def remove_frozen(self, stack_id: str) -> None:
        self._no_rows("remove a frozen stack")
        self.frozen.remove(stack_id)
        self._weights.pop(stack_id, None)
        self._refresh()

    # ----------------------------------------------------------------- weights
    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Set per-stack weights (unknown ids are ignored; 0 skips the stack)."""
        for sid, w in weights.items():
            if sid in self.frozen or sid == self.active_id:
                self._weights[sid] = float(w)
        self._refresh()

    def set_row_weights(self, stack_ids: Sequence[str], weights: torch.Tensor,
                        nonzero: Sequence[bool] | None = None, shared: dict | None = None) -> None:
        """Per-row weights: row b of the batch uses ``weights[b]`` (until :meth:`clear_row_weights`).

        Args:
            stack_ids: the stacks the columns of ``weights`` refer to; stacks not listed get 0.
            weights: ``[B, len(stack_ids)]``, one row per sequence (broadcast over tokens).
            nonzero: per column, whether any row is non-zero (computed when None: one host sync).
            shared: a dict shared by the layers of one model call, so layers with the same stacks
                share one ``[B, S]`` tensor (``B x S x 4`` bytes; 16 x 10 x 4 = 640 B).

        Raises:
            ValueError: a listed id is not a stack of this layer, or the shapes disagree.
        """
        ids = list(stack_ids)
        if weights.ndim != 2 or weights.shape[1] != len(ids):
            raise ValueError(f"row weights must be [batch, {len(ids)}], got {tuple(weights.shape)}")
        unknown = [i for i in ids if i not in self.frozen and i != self.active_id]
        if unknown:
            raise ValueError(f"row weights name stacks this layer does not hold: {unknown}")
        if nonzero is None:
            nonzero = (weights != 0).any(dim=0).tolist()
        key = (tuple(ids), tuple(self.frozen.ids), self.active_id, self.device)
        if shared is not None and key in shared:
            self._rows, on = shared[key]
        else:
            col = {sid: j for j, sid in enumerate(ids)}
            w = weights.detach().float()
            frozen = torch.zeros(w.shape[0], len(self.frozen), dtype=torch.float32, device=w.device)
            for s, sid in enumerate(self.frozen.ids):
                if sid in col:
                    frozen[:, s] = w[:, col[sid]]
            active = w[:, col[self.active_id]] if self.active_id in col else None
            self._rows = (frozen.to(self.device) * self.config.scale,
                          None if active is None else active.to(self.device).contiguous())
            on = ([s for s, sid in enumerate(self.frozen.ids) if sid in col and nonzero[col[sid]]],
                  self.active_id in col and bool(nonzero[col[self.active_id]]))
            if shared is not None:
                shared[key] = (self._rows, on)
        self._plan = (contiguous_runs(on[0]), on[1])

    def clear_row_weights(self) -> None:
        """Back to the dict weights."""
        self._rows = None
        self._refresh()

    def _no_rows(self, what: str) -> None:
        if self._rows is not None:
            raise RuntimeError(f"cannot {what} while row weights are set; clear them first")

    def _refresh(self) -> None:
        """Rebuild the plan and the ``[S]`` weight tensor from the dict weights (once per change)."""
        self._w = {}
        if self._rows is not None or not hasattr(self, "_plan"):
            return
        on = [s for s, sid in enumerate(self.frozen.ids) if self._weights.get(sid, 1.0) != 0.0]
        active_on = self.active is not None and self._weights.get(self.active_id, 1.0) != 0.0
        self._plan = (contiguous_runs(on), active_on)
        if self.frozen.ids:
            w = [self._weights.get(sid, 1.0) * self.config.scale for sid in self.frozen.ids]
            self._w[self.device, torch.float32] = torch.tensor(w, dtype=torch.float32, device=self.device)

    def _gate_weights(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """``[S_run]`` (dict) or ``[B, S_run]`` (rows) weight x scale of a run."""
        if self._rows is not None:
            return self._rows[0][:, start:stop].to(dtype)
        dev = self.device
        if (dev, dtype) not in self._w:  # once per dtype, not per forward
            self._w[dev, dtype] = self._w[dev, torch.float32].to(dtype)
        return self._w[dev, dtype][start:stop]

    # ----------------------------------------------------------------- forward
    def active_frozen_ids(self) -> tuple[str, ...]:
        """Frozen stacks that take part in the forward pass (non-zero weight), in insertion order."""
        return tuple(self.frozen.ids[s] for a, b in self._plan[0] for s in range(a, b))

    def _rows_view(self, n: int) -> int:
        """Tokens per row T for ``n`` flattened tokens under row weights."""
        b = self._rows[0].shape[0]
        if n % b:
            raise ValueError(f"row weights have {b} rows but the input has {n} token positions")
        return n // b

    def _frozen_run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Stacks ``start..stop-1`` in one pass. ``x``: ``[N, in]`` -> ``[N, out]``."""
        n, m = x.shape[0], stop - start
        e, r, k = self.config.num_experts, self.config.rank, self.config.top_k
        a_cat, r_cat, b_cat = self.frozen.run(start, stop, x.device, x.dtype)
        logits = F.linear(x, r_cat).view(n, m, e)  # (N, m, E)
        top_vals, top_idx = logits.topk(k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top_idx, torch.softmax(top_vals, dim=-1))
        w = self._gate_weights(start, stop, x.dtype)
        if w.ndim == 2:  # per row: (B, m) over (B, T, m, E)
            gates = (gates.view(w.shape[0], -1, m, e) * w.view(w.shape[0], 1, m, 1)).view(n, m, e)
        else:
            gates = gates * w.view(1, m, 1)
        h = F.linear(x, a_cat).view(n, m, e, r) * gates.unsqueeze(-1)  # gates in rank space
        return h.view(n, m * e * r) @ b_cat  # (N, out)

    def _frozen_one(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """Reference path: one frozen stack (the paper's implementation). ``[N, in]`` -> ``[N, out]``."""
        st = self.frozen[self.frozen.ids[s]]
        n = x.shape[0]
        gates, _ = top_k_gates(F.linear(x, st.router.to(x.device, x.dtype)), self.config.top_k)
        h = F.linear(x, st.lora_A.to(x.device, x.dtype).reshape(-1, self.in_features))
        h = (h.view(n, self.config.num_experts, -1) * gates.unsqueeze(-1)).reshape(n, -1)
        d = h @ st.lora_B.to(x.device, x.dtype).reshape(-1, self.out_features)
        w = self._gate_weights(s, s + 1, x.dtype)
        if w.ndim == 2:
            return (d.view(w.shape[0], -1, self.out_features) * w.view(-1, 1, 1)).view(n, -1)
        return d * w

    def _frozen_delta(self, x: torch.Tensor, ids: tuple[str, ...] | None = None) -> torch.Tensor:
        """The frozen stacks' weighted delta. ``x``: ``[N, in]`` -> ``[N, out]``.

        ``ids`` (default: :meth:`active_frozen_ids`) are grouped into contiguous runs.
        """
        if self._rows is not None:
            self._rows_view(x.shape[0])
        runs = self._plan[0] if ids is None else contiguous_runs([self.frozen.index(i) for i in ids])
        out = None
        for start, stop in runs:
            if self.frozen_mode == "batched":
                parts = [self._frozen_run(x, start, stop)]
            else:
                parts = [self._frozen_one(x, s) for s in range(start, stop)]
            for p in parts:
                out = p if out is None else out + p
        if out is None:
            return torch.zeros(x.shape[0], self.out_features, device=x.device, dtype=x.dtype)
        return out

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x``: ``[B, T, in]`` (or ``[N, in]``) -> same leading shape, ``out``."""
        y = self.base_layer(x, *args, **kwargs)
        runs, active_on = self._plan
        if not runs and not active_on:
            return y
        flat = x.reshape(-1, self.in_features)
        if self._rows is not None:
            if x.ndim > 2 and x.shape[0] != self._rows[0].shape[0]:
                raise ValueError(f"row weights have {self._rows[0].shape[0]} rows, the batch has {x.shape[0]}")
            self._rows_view(flat.shape[0])
        delta = self._frozen_delta(flat) if runs else None
        if active_on:
            if self._rows is not None:  # per-row stack weight, one per token: [N, 1]
                wa = self._rows[1]
                scale = wa.to(self.active.lora_A.dtype).view(-1, 1, 1).expand(-1, flat.shape[0] // wa.shape[0], 1)
                scale = scale.reshape(-1, 1)
            else:
                scale = self._weights[self.active_id]
            d = self.active(flat.to(self.active.lora_A.dtype), self.active_basis, out_scale=scale)
            delta = d if delta is None else delta + d.to(delta.dtype)
        if delta is None:
            return y
        return y + delta.view(*y.shape[:-1], self.out_features).to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, frozen={len(self.frozen)}, "
                f"active={self.active_id!r}, E={self.config.num_experts}, r={self.config.rank}")
