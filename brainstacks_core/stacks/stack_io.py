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
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from brainstacks_core.files import atomic_write, blake3_bytes, canonicalize_safetensors, sha256_bytes
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
        file_blake3: BLAKE3 of the whole file when it was computed (written, or verified by it).
    """

    path: Path
    stack_id: str
    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    file_sha256: str
    file_blake3: str | None = None

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
        canonicalize_safetensors(tmp)  # the same bytes in every process
        written_b3 = blake3_bytes(Path(tmp).read_bytes())
    log.info("saved stack %s (%d tensors) to %s", stack_id, len(tensors), path)
    sf = load_stack(path, base_fingerprint=base_fingerprint)
    return replace(sf, file_blake3=written_b3)


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _header(data: bytes | bytearray) -> tuple[dict, int]:
    """A safetensors header (8-byte little-endian length, then JSON) and where the tensor bytes start."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header length {n} exceeds the file size {len(data)}")
    header = json.loads(bytes(memoryview(data)[8:8 + n]))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    return header, 8 + n


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header."""
    return _header(data)[0].get("__metadata__") or {}


def _tensors_in_place(buf: bytes) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file held in ``buf``, the tensors as read-only views into it.

    The views are never written: :func:`attach_stack` and :func:`thaw_stack` copy out of them.

    ``safetensors.torch.load(bytes)`` copies every tensor out of the bytes (one more pass over
    the file, ~1.1x a warm read); views keep one copy. The layout is checked as strictly as
    safetensors does: known dtypes, offsets inside the data section, in order, without gaps
    or overlaps, and each tensor's byte length equal to its shape times its element size.

    Raises:
        ValueError: a malformed header.
    """
    header, start = _header(buf)
    with warnings.catch_warnings():  # "buffer is not writable": the views are only read
        warnings.simplefilter("ignore", UserWarning)
        return _views(buf, header, start)


def _views(buf: bytes, header: dict, start: int) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    meta = header.pop("__metadata__", None) or {}
    end_of_data = len(buf) - start
    entries = []
    cursor = 0
    for name, spec in sorted(header.items(), key=lambda kv: tuple(kv[1].get("data_offsets", (0, 0)))):
        dtype = _DTYPES.get(spec.get("dtype"))
        begin, stop = spec.get("data_offsets", (None, None))
        shape = spec.get("shape")
        if dtype is None or not isinstance(shape, list) or not isinstance(begin, int) or not isinstance(stop, int):
            raise ValueError(f"tensor {name!r}: bad header entry {spec}")
        if begin != cursor or stop < begin or stop > end_of_data:
            raise ValueError(f"tensor {name!r}: offsets {begin}..{stop} leave a gap, overlap or run past the data")
        if math.prod(shape) * dtype.itemsize != stop - begin:
            raise ValueError(f"tensor {name!r}: shape {shape} of {spec['dtype']} is not {stop - begin} bytes")
        entries.append((name, dtype, shape, begin, stop))
        cursor = stop
    if cursor != end_of_data:
        raise ValueError(f"{end_of_data - cursor} trailing bytes after the last tensor")
    whole = torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.empty(0, dtype=torch.uint8)
    tensors: dict[str, torch.Tensor] = {}
    i = 0
    while i < len(entries):  # one split per run of same-dtype tensors: two torch calls per tensor, not four
        j = i
        while j < len(entries) and entries[j][1] == entries[i][1]:
            j += 1
        dtype, begin, stop = entries[i][1], entries[i][3], entries[j - 1][4]
        run = whole[start + begin:start + stop].view(dtype)
        parts = run.split([math.prod(e[2]) for e in entries[i:j]])
        for (name, _, shape, _, _), part in zip(entries[i:j], parts):
            tensors[name] = part.view(shape)
        i = j
    return meta, tensors


def load_stack(path: str | Path, base_fingerprint: str | None = None, expected_sha256: str | None = None,
               verify: bool = True, verified_sha256: str | None = None,
               expected_blake3: str | None = None) -> StackFile:
    """Read and verify a stack file, reading it once and hashing it once.

    The bytes are read once; the tensors are read-only views into them (no copy). The
    integrity check is one hash pass over the same bytes, the fastest the caller can have:

    * ``expected_blake3`` (recorded when the file was written, e.g. in the run manifest):
      BLAKE3, multi-threaded, ~5x faster than sha256 here; ``expected_sha256`` is then
      returned as ``file_sha256`` (the same bytes had it when they were written);
    * else ``expected_sha256`` (e.g. from the catalog): the file's sha256 must equal it;
    * else ``verify``: the tensor checksum stored in the metadata is recomputed.

    Peak host memory: the file's bytes once (538 MB for a bf16 Gemma-3-12B stack); the
    tensors alias them until the caller copies them (``attach_stack`` does).

    Args:
        path: the ``.safetensors`` file.
        base_fingerprint: when given, the file must have been trained on this base.
        expected_sha256: when given, the whole file's sha256 must equal it.
        verify: without an expected digest, check the stored tensor checksum.
        verified_sha256: the caller already verified THIS file version (same size, mtime,
            ctime, inode) to have this sha256 (e.g. the stack store's record): nothing is
            hashed and it is returned as ``file_sha256``. Never pass a checksum that was
            not computed from the file itself.
        expected_blake3: the whole file's BLAKE3 recorded when it was written; when given
            (with ``expected_sha256``), BLAKE3 is the check instead of sha256.

    Raises:
        StackFileError: unreadable, checksum mismatch, or another base.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        raw_meta, tensors = _tensors_in_place(data)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise StackFileError(f"{path}: not a readable safetensors stack file ({exc})") from exc
    file_b3 = None
    if verified_sha256 is not None:
        file_sha = verified_sha256  # verified by the caller for this exact file version
    elif expected_blake3 is not None and expected_sha256 is not None:
        file_b3 = blake3_bytes(data)
        if file_b3 != expected_blake3:
            raise StackFileError(f"{path}: file checksum mismatch (expected BLAKE3 {expected_blake3[:12]}, "
                                 f"computed {file_b3[:12]}): the file is corrupt or was edited")
        file_sha = expected_sha256
    else:
        file_sha = sha256_bytes(data)
    if raw_meta.get("format") not in (FORMAT, *_OLD_FORMATS):
        raise StackFileError(f"{path}: format {raw_meta.get('format')!r} is not {FORMAT!r}")
    if verified_sha256 is not None or file_b3 is not None:
        pass
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
    return StackFile(path, meta["stack_id"], meta, tensors, file_sha, file_b3)


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
