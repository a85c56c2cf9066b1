"""FrozenBank: every frozen stack of one projection, held once, in one buffer per part.

A layer's frozen stacks are stored as three concatenations (stack order = the
order they were added):

* ``a``      ``[S*E*r, in]``  the experts' A, stack after stack;
* ``router`` ``[S*E, in]``    the routers;
* ``b``      ``[S*E*r, out]`` the experts' B with the stack's null-space projection
  already folded in (``B - (B V^T) V``, see :func:`project_out`).

``bank[stack_id]`` returns a :class:`FrozenStackWeights` whose ``lora_A``,
``lora_B`` and ``router`` are *views* of these buffers (no second copy). The
forward selects the stacks it needs with :meth:`FrozenBank.run`, a ``narrow`` of
a contiguous range of stacks: nothing is gathered, concatenated or cached per
call, and a stack outside every run is never read (weight 0 = skipped). When the
active set changes nothing is rebuilt; only adding or removing a stack
reallocates the buffers (once, the old ones are freed).

What the forward never reads (the stack's null-space basis ``[K, out]`` and its
router-noise projection ``[E, in]``, kept so the stack can be saved and trained
further) lives on the host, one tensor per stack.

Bytes at Gemma-3-12B shapes (48 layers x 7 projections; per decoder layer the
inputs sum to 38,656 and the outputs to 46,592; E=4, r=16; bf16 frozen_dtype):
``a`` 64 x 38,656 x 2 = 4.9 MB, ``b`` 64 x 46,592 x 2 = 6.0 MB, ``router``
4 x 38,656 x 2 = 0.3 MB per stack and decoder layer, i.e. 538 MB per stack and
5.4 GB for 10 stacks on the GPU (or on the host after :meth:`FrozenBank.place`).
Host side per stack: basis 64 x 46,592 x 4 x 48 = 572 MB at K=64 (fp32), noise
15 MB (bf16). Nothing here grows with tokens seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from brainstacks_core.stacks.moe_lora import MoELoRAConfig


@dataclass(frozen=True)
class FrozenStackWeights:
    """One frozen stack's tensors for one projection (read-only by convention).

    Attributes:
        lora_A: ``[E, r, in]``.
        lora_B: ``[E, r, out]`` with the null-space projection folded in (``B - (B V^T) V``).
        router: ``[E, in]`` router weight.
        basis: ``[K, out]`` orthonormal null-space rows V it was trained under, or None.
        config: the stack's MoE-LoRA configuration.
        noise: ``[E, in]`` the router's noise projection (only used to train the stack further), or None.
    """

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    router: torch.Tensor
    basis: torch.Tensor | None
    config: MoELoRAConfig
    noise: torch.Tensor | None = None


def _pin(t: torch.Tensor) -> torch.Tensor:
    """Page-locked host memory when a GPU exists (faster, asynchronous uploads)."""
    if t.device.type == "cpu" and torch.cuda.is_available():
        return t.pin_memory()
    return t


def contiguous_runs(indices: list[int]) -> tuple[tuple[int, int], ...]:
    """``[0, 1, 2, 5, 6]`` -> ``((0, 3), (5, 7))``: half-open ranges of consecutive indices."""
    runs: list[tuple[int, int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return tuple(runs)


class FrozenBank(Mapping):
    """The frozen stacks of one layer (a read-only mapping ``stack_id -> FrozenStackWeights``).

    Args:
        in_features: input width of the projection.
        out_features: output width of the projection.
        config: the layer's MoE-LoRA configuration (E, r, frozen dtype).
    """

    def __init__(self, in_features: int, out_features: int, config: MoELoRAConfig) -> None:
        self.in_features, self.out_features = in_features, out_features
        self.config = config
        self.ids: list[str] = []
        self.a: torch.Tensor | None = None  # [S*E*r, in]
        self.router: torch.Tensor | None = None  # [S*E, in]
        self.b: torch.Tensor | None = None  # [S*E*r, out]
        self._host: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}  # basis, noise
        self.home: torch.device | None = None  # set by place(); None = where the first stack was added

    # ------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.ids))

    def __contains__(self, stack_id: object) -> bool:
        return stack_id in self._host

    def __getitem__(self, stack_id: str) -> FrozenStackWeights:
        if stack_id not in self._host:
            raise KeyError(stack_id)
        i = self.ids.index(stack_id)
        e, r = self.config.num_experts, self.config.rank
        basis, noise = self._host[stack_id]
        return FrozenStackWeights(
            lora_A=self.a[i * e * r:(i + 1) * e * r].view(e, r, self.in_features),
            lora_B=self.b[i * e * r:(i + 1) * e * r].view(e, r, self.out_features),
            router=self.router[i * e:(i + 1) * e], basis=basis, config=self.config, noise=noise)

    def index(self, stack_id: str) -> int:
        return self.ids.index(stack_id)

    @property
    def device(self) -> torch.device | None:
        """Where the buffers live (None while empty and not placed)."""
        return self.a.device if self.a is not None else self.home

    def nbytes(self) -> int:
        """Bytes of the concatenated buffers (the only copy of the stacks' forward tensors)."""
        return sum(t.numel() * t.element_size() for t in (self.a, self.router, self.b) if t is not None)

    # --------------------------------------------------------------- mutation
    def add(self, stack_id: str, w: FrozenStackWeights, device: torch.device | None) -> None:
        """Append a stack (B already projected). ``device``: where a first stack goes unless placed."""
        target = self.device or device or torch.device("cpu")
        dtype = self.config.torch_frozen_dtype
        e, r = self.config.num_experts, self.config.rank
        parts = (w.lora_A.reshape(e * r, self.in_features), w.router.reshape(e, self.in_features),
                 w.lora_B.reshape(e * r, self.out_features))
        parts = [p.detach().to(target, dtype) for p in parts]
        if self.a is None:
            self.a, self.router, self.b = (p.clone().contiguous() for p in parts)
        else:
            self.a = torch.cat([self.a, parts[0]])
            self.router = torch.cat([self.router, parts[1]])
            self.b = torch.cat([self.b, parts[2]])
        self._repin()
        basis = None if w.basis is None else w.basis.detach().float().cpu().contiguous()
        noise = None if w.noise is None else w.noise.detach().to("cpu", dtype).contiguous()
        self.ids.append(stack_id)
        self._host[stack_id] = (basis, noise)

    def remove(self, stack_id: str) -> None:
        i = self.ids.index(stack_id)
        e, r = self.config.num_experts, self.config.rank
        self.ids.pop(i)
        self._host.pop(stack_id)
        if not self.ids:
            self.a = self.router = self.b = None
            return
        self.a = torch.cat([self.a[:i * e * r], self.a[(i + 1) * e * r:]])
        self.router = torch.cat([self.router[:i * e], self.router[(i + 1) * e:]])
        self.b = torch.cat([self.b[:i * e * r], self.b[(i + 1) * e * r:]])
        self._repin()

    def place(self, device: torch.device | str) -> None:
        """Move the buffers to ``device`` once (e.g. ``"cpu"`` during training, paper 3.2)."""
        self.home = torch.device(device)
        if self.a is not None:
            self.a, self.router, self.b = (t.to(self.home) for t in (self.a, self.router, self.b))
            self._repin()

    def _repin(self) -> None:
        if self.a is not None and self.a.device.type == "cpu":
            self.a, self.router, self.b = (_pin(t) for t in (self.a, self.router, self.b))

    # ---------------------------------------------------------------- forward
    def run(self, start: int, stop: int, device: torch.device, dtype: torch.dtype
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stacks ``start..stop-1`` as ``(A [m*E*r, in], router [m*E, in], B [m*E*r, out])``.

        Views of the buffers (``narrow``) when they already live on ``device`` in
        ``dtype``; otherwise only this range is copied/cast, for this call only.
        """
        e, r = self.config.num_experts, self.config.rank
        a = self.a[start * e * r:stop * e * r]
        rt = self.router[start * e:stop * e]
        b = self.b[start * e * r:stop * e * r]
        if a.device != device or a.dtype != dtype:
            a, rt, b = (t.to(device, dtype, non_blocking=True) for t in (a, rt, b))
        return a, rt, b
