"""Null-space bases: the output directions earlier domains' frozen stacks use.

Brainstacks section 3.5. Two settings of :class:`NullSpaceConfig` pick how:

* ``combine: joint`` (the paper's procedure): the earlier domains' validation
  samples run through the model with all their frozen stacks on, and ONE SVD of
  those rows keeps the top-K right singular vectors (K in total).
* ``combine: per_domain``: for every PREVIOUS domain, its own frozen stacks' deltas
  on its own validation data, the top-K of each, and the union re-orthonormalised
  (an SVD of the stacked rows, dependent directions dropped, at most ``out``): K
  directions per earlier domain, as the paper's capacity figures assume.
* ``rows: per_sample`` (the paper's ``D [nsamples, hdim]``): one row per validation
  sample, the mean of the frozen delta over its real (non-padding) tokens; the
  paper's "stack these deltas into [nsamples, hdim]" needs one vector per sample
  and the mean is the reduction that keeps every token's direction (a last-token
  row would see only one position). ``rows: per_token``: every real token's delta
  is a row, uniformly sampled up to ``max_rows``.

Either way ``V`` is ``[K_total, out]`` per layer (``torch.svd_lowrank``, seeded, or a
full SVD when small; never a dense ``out x out`` projector). The new stack's output is
projected with ``d - (d V^T) V`` in training and inference. Directions whose
singular value is negligible (a layer whose frozen delta is ~0) are dropped, so
a no-op stack reserves no capacity.

Memory: deltas are sampled per batch on the model's device (padding positions
masked out), into one :class:`DeltaReservoir` per layer holding at most
``max_rows`` rows: ``max_rows x out`` elements per layer in the delta's dtype,
whatever the number of validation rows, for one domain at a time. At Gemma-3-12B
shapes (48 layers x 7 projections, sum of outputs 46,592 per layer block) and
``max_rows`` 8192 in bf16 that is 8192 x 46,592 x 48 x 2 B = 36.6 GB (18.3 GB at
4096 rows), plus 8 B per row per layer of sampling keys (3 MB); the SVD runs one
layer at a time in fp32 (at most 8192 x 15,360 x 4 B = 503 MB transient). The
bases themselves are ``K_total x out`` fp32 per layer: 64 x 46,592 x 48 x 4 B =
572 MB per earlier domain.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from brainstacks_core.files import atomic_write, canonicalize_safetensors
from brainstacks_core.stacks.config import NullSpaceConfig
from brainstacks_core.stacks.inject import only_stacks, stacked_layers
from brainstacks_core.stacks.stack_io import tensor_checksum

log = logging.getLogger(__name__)


def top_directions(deltas: torch.Tensor, cfg: NullSpaceConfig, seed: int = 0) -> torch.Tensor:
    """Top right singular vectors of ``deltas``.

    Args:
        deltas: ``[N, out]`` frozen-stack output deltas.
        cfg: null-space configuration.
        seed: seed of the randomized SVD (the global RNG is left untouched).

    Returns:
        ``[K', out]`` orthonormal fp32 rows on the deltas' device, K' <= cfg.k
        (negligible directions dropped).
    """
    d = deltas.float()
    n, out = d.shape
    k = min(cfg.k, n, out)
    if not torch.isfinite(d).all():
        raise ValueError("frozen-stack deltas contain NaN/inf: a frozen stack is corrupt or diverged; "
                         "refusing to compute a null space from them")
    if k == 0 or d.abs().max() == 0:  # a no-op stack claims no directions
        return torch.zeros(0, out, device=d.device)
    if min(n, out) <= cfg.full_svd_below:
        _, s, vh = torch.linalg.svd(d, full_matrices=False)
        v = vh[:k]
    else:
        devices = [d.device] if d.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            _, s, v_cols = torch.svd_lowrank(d, q=min(k + cfg.oversample, n, out), niter=cfg.niter)
        v = v_cols[:, :k].T
    s = s[:k]
    keep = s >= cfg.rel_tol * s[0]
    return v[keep].contiguous()


def merge_directions(parts: Sequence[torch.Tensor], out: int, tol: float = 1e-4) -> torch.Tensor:
    """Orthonormal rows spanning the union of several domains' directions.

    Args:
        parts: ``[K_i, out]`` orthonormal rows per earlier domain.
        out: output width (the cap on the result's rows).
        tol: a direction already spanned by the others (singular value < tol) is dropped.

    Returns:
        ``[K_total, out]`` fp32, ``K_total <= min(sum K_i, out)``.
    """
    rows = [p.float() for p in parts if p.shape[0]]
    if not rows:
        return torch.zeros(0, out, device=parts[0].device if parts else "cpu")
    if len(rows) == 1:
        return rows[0].contiguous()
    _, s, vh = torch.linalg.svd(torch.cat(rows), full_matrices=False)  # [sum K, out] -> vh [min, out]
    return vh[s >= tol].contiguous()


class DeltaReservoir:
    """A uniform sample of at most ``max_rows`` delta rows, kept on the rows' device.

    Bottom-k sampling: every row gets a uniform random key and the ``max_rows``
    rows with the smallest keys seen so far are kept, so after any number of
    batches the buffer is a uniform sample without replacement of every row seen.

    Attributes:
        rows: ``[n, out]`` buffer, ``n <= max_rows`` (the delta's dtype).
        keys: ``[n]`` fp32 sampling keys.
        seen: rows offered so far.
    """

    def __init__(self, max_rows: int, generator: torch.Generator) -> None:
        self.max_rows = max_rows
        self.generator = generator
        self.rows: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.seen = 0

    def add(self, d: torch.Tensor) -> None:
        """Offer ``d`` ``[n, out]`` (real token positions only)."""
        self.seen += d.shape[0]
        keys = torch.rand(d.shape[0], generator=self.generator, device=self.generator.device).to(d.device)
        if self.rows is None:
            take = keys.argsort()[:self.max_rows]
            self.rows, self.keys = d[take].clone(), keys[take]
            return
        room = self.max_rows - self.rows.shape[0]
        if room > 0:  # fill first
            take = keys.argsort()[:room]
            self.rows, self.keys = torch.cat([self.rows, d[take]]), torch.cat([self.keys, keys[take]])
            rest = torch.ones(d.shape[0], dtype=torch.bool, device=d.device)
            rest[take] = False
            d, keys = d[rest], keys[rest]
            if d.shape[0] == 0:
                return
        m = self.rows.shape[0]
        keep = torch.cat([self.keys, keys]).topk(m, largest=False).indices  # the m smallest keys
        new = keep[keep >= m] - m
        evicted = torch.ones(m, dtype=torch.bool, device=d.device)
        evicted[keep[keep < m]] = False
        slots = evicted.nonzero().squeeze(1)
        self.rows[slots] = d[new].to(self.rows.dtype)
        self.keys[slots] = keys[new]


def sample_means(delta: torch.Tensor, sample: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Mean delta of each sample over its tokens.

    Args:
        delta: ``[n, out]`` deltas of the real token positions of a batch.
        sample: ``[n]`` the batch row (sample) each position belongs to.
        num_samples: ``B``, the batch's rows.

    Returns:
        ``[B, out]`` fp32 per-sample means (a sample without real tokens gives a zero row).
    """
    sums = torch.zeros(num_samples, delta.shape[1], dtype=torch.float32, device=delta.device)
    sums.index_add_(0, sample, delta.float())
    counts = torch.bincount(sample, minlength=num_samples).clamp_min(1).to(sums.dtype)
    return sums / counts.unsqueeze(1)


@torch.no_grad()
def collect_frozen_deltas(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                          max_rows: int, seed: int = 0, rows: str = "per_token") -> dict[str, torch.Tensor]:
    """Run validation batches through the model and sample the frozen stacks' deltas.

    Only frozen stacks with non-zero weight contribute (the active stack, if any,
    is not part of the delta); padding positions are masked out before sampling.

    Args:
        model: a model with injected stacked layers and frozen stacks.
        batches: ``{"input_ids": [B, T], "attention_mask": [B, T]}`` on the model's device.
        max_rows: rows kept per layer (uniform sample over all rows offered).
        seed: seed of the sample.
        rows: ``per_token`` (one row per real token position) or ``per_sample`` (one
            fp32 row per batch row: :func:`sample_means` of its real tokens' deltas).

    Returns:
        Layer name -> ``[N, out]`` deltas on the model's device, N <= max_rows
        (per_sample: N <= the number of samples).
    """
    if rows not in ("per_token", "per_sample"):
        raise ValueError(f"rows must be per_token or per_sample, got {rows!r}")
    layers = stacked_layers(model)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    pools = {n: DeltaReservoir(max_rows, gen) for n in layers}
    real: dict = {}

    def mask_on(dev: torch.device) -> torch.Tensor:
        """The batch's real-token mask on ``dev``, copied once per device and batch."""
        if dev not in real:
            real[dev] = real["mask"].to(dev)
        return real[dev]

    def sample_on(dev: torch.device) -> torch.Tensor:
        """The batch row of every real position ``[n_real]`` on ``dev``."""
        key = ("sample", dev)
        if key not in real:
            real[key] = real["sample"].to(dev)
        return real[key]

    def hook(name):
        def fn(module, inputs, _output):
            ids = module.active_frozen_ids()
            if ids:
                x = inputs[0].reshape(-1, module.in_features)
                x = x[mask_on(x.device)]  # [n_real, in]; a layer on another GPU gets the mask on its device
                d = module._frozen_delta(x, ids)  # [n_real, out]
                if rows == "per_sample":
                    d = sample_means(d, sample_on(d.device), real["B"])  # [B, out]
                pools[name].add(d)
        return fn

    handles = [layer.register_forward_hook(hook(n)) for n, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            real.clear()
            att = batch["attention_mask"]  # [B, T]
            real["mask"] = att.reshape(-1).bool()
            real["B"] = att.shape[0]
            real["sample"] = torch.arange(att.shape[0], device=att.device).repeat_interleave(att.shape[1])[
                real["mask"]]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: p.rows for n, p in pools.items() if p.rows is not None}


def compute_bases(model: nn.Module, groups: Sequence[tuple[Sequence[str] | None, Iterable[dict[str, torch.Tensor]]]],
                  cfg: NullSpaceConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Null-space rows V ``[K_total, out]`` per layer (``cfg.combine``, ``cfg.rows``: module docstring).

    Args:
        model: the model with every earlier domain's frozen stacks attached.
        groups: per earlier domain, ``(its stack ids, its validation batches)``;
            ``None`` as ids uses every frozen stack. With ``combine: joint`` the groups
            become one: every group's batches, with the union of their stacks on.
        cfg: null-space configuration (``k`` per domain or in total, ``max_rows`` per SVD and layer).
        seed: seed of the row sample and the randomized SVD.

    Returns:
        Layer name -> fp32 ``[K_total, out]`` orthonormal rows on the CPU.
    """
    groups = list(groups)
    if cfg.combine == "joint" and len(groups) > 1:
        ids_all = None if any(ids is None for ids, _ in groups) else [s for ids, _ in groups for s in ids]
        groups = [(ids_all, itertools.chain.from_iterable(b for _, b in groups))]
    parts: dict[str, list[torch.Tensor]] = {}
    widths = {n: layer.out_features for n, layer in stacked_layers(model).items()}
    for i, (ids, batches) in enumerate(groups):
        with only_stacks(model, ids) if ids is not None else nullcontext():
            deltas = collect_frozen_deltas(model, batches, cfg.max_rows, seed=seed + i, rows=cfg.rows)
        for name, d in deltas.items():
            parts.setdefault(name, []).append(top_directions(d, cfg, seed=seed + i).cpu())
        del deltas
    bases = {name: merge_directions(p, widths[name]) for name, p in parts.items()}
    kept = [b.shape[0] for b in bases.values()]
    log.info("null space: %d layers, %d SVD group(s) (%s, %s rows), %s directions kept per layer (k=%d)",
             len(bases), len(groups), cfg.combine, cfg.rows, f"{min(kept)}-{max(kept)}" if kept else "0", cfg.k)
    return bases


def save_bases(path: str | Path, bases: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write bases atomically as safetensors; returns their tensor checksum."""
    tensors = {name: b.contiguous() for name, b in bases.items()}
    checksum = tensor_checksum(tensors)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "tensor_sha256": checksum})
        canonicalize_safetensors(tmp)  # the same bytes in every process
    return checksum


def load_bases(path: str | Path) -> dict[str, torch.Tensor]:
    """Read bases written by :func:`save_bases`, verifying their checksum."""
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        stored = (fh.metadata() or {}).get("tensor_sha256")
    if stored != tensor_checksum(tensors):
        raise ValueError(f"{path}: null-space basis checksum mismatch; the file is corrupt")
    return tensors
