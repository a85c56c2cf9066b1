"""Stack files: one frozen stack (all its layers) per ``.safetensors`` file.

Tensors are named ``<layer name>.lora_A`` ``[E, r, in]``, ``.lora_B`` ``[E, r, out]``,
``.router`` ``[E, in]``, ``.noise`` ``[E, in]`` (the router's noise projection)
and, when the stack was trained under a null-space projection, ``.basis``
``[K, out]``. Format ``/2`` stores B with that projection folded in
(``B - (B V^T) V``, what the forward uses); ``/1`` files stored B as trained
and are projected on load. A file holds everything needed to train the stack
further (:func:`thaw_stack`). The safetensors metadata (strings only)
repeats the stack's identity and lineage, so a copied file still says where it
came from: format, stack_id, domain, round, moe_config, base_fingerprint,
tensor_sha256, code_version, lineage (JSON: dataset versions, parent stacks,
null-space version, metrics, ...).

Writes are atomic; loads verify the checksum, the layer shapes and the base
fingerprint. Only safetensors is read: no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from brainstacks_core.files import atomic_write, sha256_bytes
from brainstacks_core.stacks.inject import stacked_layers
from brainstacks_core.stacks.moe_lora import MoELoRAConfig, project_out
from brainstacks_core.stacks.stacked_layer import FrozenStackWeights

log = logging.getLogger(__name__)
FORMAT = "brainstacks.stack/2"
_OLD_FORMATS = ("brainstacks.stack/1",)  # lora_B stored before the projection; projected on load
_PARTS = ("lora_A", "lora_B", "router", "basis", "noise")


class StackFileError(ValueError):
    """A stack file is corrupt, does not fit the model, or belongs to another base."""


@dataclass(frozen=True)
class StackFile:
    """A loaded stack file.

    Attributes:
        path: where it was read from.
        stack_id: the stack's id.
        metadata: decoded metadata (``moe_config`` and ``lineage`` parsed from JSON).
        tensors: name -> tensor.
        file_sha256: sha256 of the whole file.
    """

    path: Path
    stack_id: str
    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    file_sha256: str

    @property
    def config(self) -> MoELoRAConfig:
        return MoELoRAConfig.from_dict(self.metadata["moe_config"])

    def layer_weights(self) -> dict[str, FrozenStackWeights]:
        """Group tensors by layer name into :class:`FrozenStackWeights`."""
        layers: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in self.tensors.items():
            layer, _, part = name.rpartition(".")
            layers.setdefault(layer, {})[part] = t
        cfg = self.config
        out = {}
        for layer, p in layers.items():
            b = p["lora_B"]
            if self.metadata["format"] in _OLD_FORMATS and p.get("basis") is not None:
                flat = project_out(b.float().reshape(-1, b.shape[-1]), p["basis"].float())
                b = flat.reshape(b.shape).to(b.dtype)
            out[layer] = FrozenStackWeights(p["lora_A"], b, p["router"], p.get("basis"), cfg, p.get("noise"))
        return out


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stack_tensors(model: nn.Module, stack_id: str) -> tuple[dict[str, torch.Tensor], MoELoRAConfig]:
    """Collect one frozen stack's tensors from every injected layer."""
    tensors: dict[str, torch.Tensor] = {}
    config = None
    for name, layer in stacked_layers(model).items():
        if stack_id not in layer.frozen:
            raise KeyError(f"stack {stack_id!r} is not frozen in layer {name}")
        st = layer.frozen[stack_id]
        config = st.config
        for part in _PARTS:
            t = getattr(st, part)
            if t is not None:
                tensors[f"{name}.{part}"] = t.detach().contiguous().cpu().clone()
    if config is None:
        raise ValueError("model has no injected layers")
    return tensors, config


def save_stack(path: str | Path, model: nn.Module, stack_id: str, *, domain: str, round_index: int,
               base_fingerprint: str, code_version: str = "", lineage: dict[str, Any] | None = None) -> StackFile:
    """Write a frozen stack to ``path`` atomically.

    Args:
        path: destination ``.safetensors`` file.
        model: the model holding the frozen stack.
        stack_id: which stack.
        domain: its domain.
        round_index: its boosting round (1-based).
        base_fingerprint: fingerprint of the base model it was trained on.
        code_version: version of the code that trained it (the caller's lineage).
        lineage: caller-supplied lineage (dataset versions, parents, metrics, ...).

    Returns:
        The written file, as :func:`load_stack` would return it.
    """
    tensors, config = stack_tensors(model, stack_id)
    metadata = {
        "format": FORMAT,
        "stack_id": stack_id,
        "domain": domain,
        "round": str(round_index),
        "moe_config": json.dumps(config.to_dict(), sort_keys=True),
        "base_fingerprint": base_fingerprint,
        "tensor_sha256": tensor_checksum(tensors),
        "code_version": code_version,
        "lineage": json.dumps(lineage or {}, sort_keys=True, default=str),
    }
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    log.info("saved stack %s (%d tensors) to %s", stack_id, len(tensors), path)
    return load_stack(path, base_fingerprint=base_fingerprint)


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header length {n} exceeds the file size {len(data)}")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def load_stack(path: str | Path, base_fingerprint: str | None = None, expected_sha256: str | None = None,
               verify: bool = True, verified_sha256: str | None = None) -> StackFile:
    """Read and verify a stack file, reading it once and hashing it once.

    The bytes are read once; their sha256 is the file's checksum; the tensors are
    parsed from the same bytes (``safetensors.torch.load``). When
    ``expected_sha256`` is given (e.g. from the catalog or a manifest), the file
    checksum is the verification and the per-tensor checksum is not recomputed;
    otherwise ``verify`` recomputes the tensor checksum stored in the metadata.
    Peak host memory: the file's bytes plus its tensors (2 x 538 MB for a bf16
    Gemma-3-12B stack, transient).

    Args:
        path: the ``.safetensors`` file.
        base_fingerprint: when given, the file must have been trained on this base.
        expected_sha256: when given, the whole file's sha256 must equal it.
        verify: without ``expected_sha256``, check the stored tensor checksum.
        verified_sha256: the caller already verified THIS file version (same size, mtime,
            ctime, inode) to have this sha256 (e.g. the stack store's record): nothing is
            hashed and it is returned as ``file_sha256``. Never pass a checksum that was
            not computed from the file itself.

    Raises:
        StackFileError: unreadable, checksum mismatch, or another base.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        raw_meta = _header_metadata(data)
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise StackFileError(f"{path}: not a readable safetensors stack file ({exc})") from exc
    file_sha = verified_sha256 if verified_sha256 is not None else sha256_bytes(data)
    del data
    if raw_meta.get("format") not in (FORMAT, *_OLD_FORMATS):
        raise StackFileError(f"{path}: format {raw_meta.get('format')!r} is not {FORMAT!r}")
    if verified_sha256 is not None:
        pass  # verified by the caller for this exact file version
    elif expected_sha256 is not None:
        if file_sha != expected_sha256:
            raise StackFileError(f"{path}: file checksum mismatch (expected {expected_sha256[:12]}, "
                                 f"computed {file_sha[:12]}): the file is corrupt or was edited")
    elif verify:
        actual = tensor_checksum(tensors)
        if actual != raw_meta.get("tensor_sha256"):
            raise StackFileError(f"{path}: tensor checksum mismatch (stored {raw_meta.get('tensor_sha256', '')[:12]}"
                                 f", computed {actual[:12]}): the file is corrupt or was edited")
    if base_fingerprint is not None and raw_meta.get("base_fingerprint") != base_fingerprint:
        raise StackFileError(f"{path}: trained on base {raw_meta.get('base_fingerprint')!r}, "
                             f"but the loaded base is {base_fingerprint!r}")
    meta: dict[str, Any] = dict(raw_meta)
    meta["moe_config"] = json.loads(meta["moe_config"])
    meta["lineage"] = json.loads(meta.get("lineage", "{}"))
    meta["round"] = int(meta["round"])
    return StackFile(path, meta["stack_id"], meta, tensors, file_sha)


def attach_stack(model: nn.Module, stack: StackFile, weight: float = 1.0, inference_only: bool = False) -> None:
    """Attach a loaded stack to every injected layer of ``model`` as a frozen stack.

    Args:
        model: the injected model.
        stack: a loaded stack file.
        weight: its dict weight in every layer.
        inference_only: keep only what the forward reads (A, B, router): the null-space
            basis (fp32 ``[K, out]``, 572 MB per stack at Gemma-3-12B K=64) and the router
            noise (15 MB) are dropped, so the stack can no longer be saved or thawed.

    Raises:
        StackFileError: a layer is missing on either side, or a shape does not fit.
    """
    layers = stacked_layers(model)
    weights = stack.layer_weights()
    missing, unexpected = sorted(set(layers) - set(weights)), sorted(set(weights) - set(layers))
    if missing or unexpected:
        raise StackFileError(f"{stack.path}: layers do not match the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, w in weights.items():
        if inference_only:
            w = replace(w, basis=None, noise=None)
        try:
            layers[name].add_frozen(stack.stack_id, w)
        except ValueError as exc:
            raise StackFileError(f"{stack.path}: layer {name}: {exc}") from exc
        layers[name].set_weights({stack.stack_id: weight})


def thaw_stack(model: nn.Module, stack: StackFile) -> list[nn.Parameter]:
    """Load a stack file back as the model's active, trainable stack (to train it further, e.g. RL).

    Every layer gets a :class:`MoELoRADelta` holding the file's A, B (as stored:
    the null-space projection folded in, so training under the same basis gives
    the same function), router and router-noise projection, and the file's basis
    as the active basis. A frozen copy of the same stack id is detached first.

    Returns:
        The trainable parameters.

    Raises:
        StackFileError: layers or shapes do not fit, or the model already has an active stack.
    """
    layers = stacked_layers(model)
    weights = stack.layer_weights()
    if set(layers) != set(weights):
        raise StackFileError(f"{stack.path}: layers do not match the model")
    if any(layer.active is not None for layer in layers.values()):
        raise StackFileError(f"{stack.path}: the model already has an active stack; freeze or drop it first")
    if any(w.noise is None for w in weights.values()):
        log.warning("%s has no router-noise projection (an older file): it starts at zero", stack.path)
    params: list[nn.Parameter] = []
    for name, layer in layers.items():
        w = weights[name]
        try:
            layer.check_fits(stack.stack_id, w)
        except ValueError as exc:
            raise StackFileError(f"{stack.path}: layer {name}: {exc}") from exc
        if stack.stack_id in layer.frozen:
            layer.remove_frozen(stack.stack_id)
        delta = layer.add_active(stack.stack_id, w.basis)
        with torch.no_grad():
            delta.lora_A.copy_(w.lora_A)
            delta.lora_B.copy_(w.lora_B)
            delta.router.weight.copy_(w.router)
            if w.noise is not None:
                delta.noise_linear.weight.copy_(w.noise)
            else:
                delta.noise_linear.weight.zero_()
        params.extend(delta.parameters())
    return params
