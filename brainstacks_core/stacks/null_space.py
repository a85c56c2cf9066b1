"""Null-space bases: the output directions earlier domains' frozen stacks use.

Brainstacks section 3.5, done as the paper says (not as its reference code):
the deltas are collected on the validation data of the PREVIOUS domains, through
the frozen stacks, at every injected layer; the top-K right singular vectors of
the stacked deltas (``torch.svd_lowrank``, or a full SVD when small) are kept as
``V`` ``[K, out]`` per layer (never a dense ``out x out`` projector). The new
stack's output is projected with ``d - (d V^T) V`` in training and inference.
Directions whose singular value is negligible (a layer whose frozen delta is
~0) are dropped, so a no-op stack reserves no capacity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from brainstacks_core.files import atomic_write
from brainstacks_core.stacks.config import NullSpaceConfig
from brainstacks_core.stacks.inject import stacked_layers
from brainstacks_core.stacks.stack_io import tensor_checksum

log = logging.getLogger(__name__)


def top_directions(deltas: torch.Tensor, cfg: NullSpaceConfig) -> torch.Tensor:
    """Top right singular vectors of ``deltas``.

    Args:
        deltas: ``[N, out]`` frozen-stack output deltas.
        cfg: null-space configuration.

    Returns:
        ``[K', out]`` orthonormal rows, K' <= cfg.k (negligible directions dropped).
    """
    d = deltas.float()
    n, out = d.shape
    k = min(cfg.k, n, out)
    if not torch.isfinite(d).all():
        raise ValueError("frozen-stack deltas contain NaN/inf: a frozen stack is corrupt or diverged; "
                         "refusing to compute a null space from them")
    if k == 0 or d.abs().max() == 0:  # a no-op stack claims no directions
        return torch.zeros(0, out)
    if min(n, out) <= cfg.full_svd_below:
        _, s, vh = torch.linalg.svd(d, full_matrices=False)
        v = vh[:k]
    else:
        _, s, v_cols = torch.svd_lowrank(d, q=min(k + cfg.oversample, n, out), niter=cfg.niter)
        v = v_cols[:, :k].T
    s = s[:k]
    keep = s >= cfg.rel_tol * s[0]
    return v[keep].contiguous()


@torch.no_grad()
def collect_frozen_deltas(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                          max_rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Run validation batches through the model and record the frozen stacks' deltas.

    Only frozen stacks contribute (the active stack, if any, is not part of the
    delta); only real (non-padding) token positions are kept.

    Args:
        model: a model with injected stacked layers and frozen stacks.
        batches: ``{"input_ids": [B, T], "attention_mask": [B, T]}`` on the model's device.
        max_rows: token rows kept per layer (uniform subsample).
        seed: seed of the subsample.

    Returns:
        Layer name -> ``[N, out]`` deltas, N <= max_rows (uniformly subsampled).
    """
    layers = stacked_layers(model)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    keep_mask: list[torch.Tensor] = []

    def hook(name):
        def fn(module, inputs, _output):
            ids = module.active_frozen_ids()
            if ids:
                x = inputs[0].reshape(-1, module.in_features)
                rows[name].append(module._frozen_delta(x, ids).float().cpu())
        return fn

    handles = [layer.register_forward_hook(hook(n)) for n, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            keep_mask.append(batch["attention_mask"].reshape(-1).bool().cpu())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    mask = torch.cat(keep_mask) if keep_mask else torch.zeros(0, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, chunks in rows.items():
        if not chunks:
            continue
        d = torch.cat(chunks)[mask]
        if d.shape[0] > max_rows:
            d = d[torch.randperm(d.shape[0], generator=gen)[:max_rows]]
        out[name] = d
    return out


def compute_bases(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], cfg: NullSpaceConfig,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Null-space rows V ``[K, out]`` per layer from the previous domains' validation batches."""
    deltas = collect_frozen_deltas(model, batches, cfg.max_rows, seed=seed)
    bases = {name: top_directions(d, cfg) for name, d in deltas.items()}
    kept = [b.shape[0] for b in bases.values()]
    log.info("null space: %d layers, %s directions kept per layer (k=%d)", len(bases),
             f"{min(kept)}-{max(kept)}" if kept else "0", cfg.k)
    return bases


def save_bases(path: str | Path, bases: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write bases atomically as safetensors; returns their tensor checksum."""
    tensors = {name: b.contiguous() for name, b in bases.items()}
    checksum = tensor_checksum(tensors)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "tensor_sha256": checksum})
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
