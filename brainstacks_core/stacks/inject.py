"""Inject StackedMoELoRALayers into a Hugging Face causal LM, and model-level stack ops.

Target matching follows PEFT: a module name matches a target when it equals it,
ends with ``"." + target``, or (for targets given as ``re:<pattern>``) fully
matches the regex. The names of the projections used by Llama, Mistral, Qwen2/3
and Gemma-2/3 (q/k/v/o_proj, gate/up/down_proj) are the default targets.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator, Sequence

import torch
from torch import nn

from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.stacked_layer import StackedMoELoRALayer

log = logging.getLogger(__name__)
# Sub-models of multimodal checkpoints that stacks never wrap (Gemma-3's SigLIP tower and its projector, ...):
# in Gemma3ForConditionalGeneration only ``model.language_model.*`` is wrapped.
NON_TEXT_MODULES = ("vision_tower", "multi_modal_projector", "vision_model", "visual", "audio_tower",
                    "embed_vision", "embed_audio")


def _non_text_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(name + "." for name, _ in model.named_modules()
                 if name and name.rpartition(".")[2] in NON_TEXT_MODULES)


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    try:  # bitsandbytes is optional at import time
        import bitsandbytes as bnb

        return isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    except ImportError:  # pragma: no cover
        return False


def name_matches(name: str, targets: Sequence[str]) -> bool:
    """Exact, suffix (``.target``) or regex (``re:pattern``) match, as in PEFT."""
    for t in targets:
        if t.startswith("re:"):
            if re.fullmatch(t[3:], name):
                return True
        elif name == t or name.endswith("." + t):
            return True
    return False


def inject_stacks(model: nn.Module, config: MoELoRAConfig, targets: Sequence[str] | None = None) -> list[str]:
    """Replace every matching linear projection with a :class:`StackedMoELoRALayer`.

    All base parameters are frozen. Already-injected layers are left as they are.
    Only the language model is wrapped: modules under a vision or audio tower
    (:data:`NON_TEXT_MODULES`, e.g. Gemma-3's ``model.vision_tower``) never are.

    Args:
        model: a causal LM (any ``nn.Module``).
        config: MoE-LoRA configuration for the stacks.
        targets: names to match; defaults to ``config.targets``.

    Returns:
        The replaced module names, in model order.

    Raises:
        ValueError: no module matched the targets.
    """
    targets = tuple(targets or config.targets)
    skip = _non_text_prefixes(model)
    matches = [(name, module) for name, module in model.named_modules()
               if not isinstance(module, StackedMoELoRALayer) and ".base_layer" not in name
               and not (name + ".").startswith(skip)
               and ".active." not in name and name_matches(name, targets) and _is_linear(module)]
    if not matches:
        raise ValueError(f"no module matched targets {list(targets)}; linear modules are e.g. "
                         f"{[n for n, m in model.named_modules() if _is_linear(m)][:5]}")
    adapters = {id(p) for m in model.modules() if isinstance(m, StackedMoELoRALayer) and m.active is not None
                for p in m.active.parameters()}
    for p in model.parameters():  # the base is frozen; an existing active stack stays trainable
        if id(p) not in adapters:
            p.requires_grad_(False)
    replaced: list[str] = []
    for name, module in matches:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, StackedMoELoRALayer(module, config).train(module.training))
        replaced.append(name)
    log.info("injected %d stacked MoE-LoRA layers", len(replaced))
    return replaced


def stacked_layers(model: nn.Module) -> dict[str, StackedMoELoRALayer]:
    """Every injected layer by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, StackedMoELoRALayer)}


def add_active_stack(model: nn.Module, stack_id: str, bases: dict[str, torch.Tensor] | None = None,
                     seed: int | None = None) -> list[nn.Parameter]:
    """Add a fresh trainable stack to every injected layer.

    Args:
        model: a model with injected layers.
        stack_id: id of the new stack.
        bases: optional null-space rows V ``[K, out]`` per layer name.
        seed: seeds the A/router initialisation for reproducibility.

    Returns:
        The new trainable parameters.
    """
    if seed is not None:
        torch.manual_seed(seed)
    params: list[nn.Parameter] = []
    for name, layer in stacked_layers(model).items():
        delta = layer.add_active(stack_id, None if bases is None else bases.get(name))
        params.extend(delta.parameters())
    return params


def freeze_active_stack(model: nn.Module) -> str:
    """Freeze the active stack in every layer; returns its id."""
    ids = {layer.freeze_active() for layer in stacked_layers(model).values()}
    if len(ids) != 1:
        raise RuntimeError(f"layers disagreed on the active stack: {ids}")
    return ids.pop()


def drop_active_stack(model: nn.Module) -> None:
    """Discard the active stack everywhere (a round that did not improve)."""
    for layer in stacked_layers(model).values():
        layer.drop_active()


def remove_stack(model: nn.Module, stack_id: str) -> None:
    """Detach a frozen stack from every layer (e.g. a round that did not improve once frozen)."""
    for layer in stacked_layers(model).values():
        layer.remove_frozen(stack_id)


def set_stack_weights(model: nn.Module, weights: dict[str, float]) -> None:
    """Set per-stack weights in every layer (0 = the stack is skipped)."""
    for layer in stacked_layers(model).values():
        layer.set_weights(weights)


def place_frozen_stacks(model: nn.Module, device: torch.device | str | None) -> int:
    """Keep every layer's frozen stacks on ``device`` (paper 3.2: on the host while the next stack trains).

    Each layer's :class:`~brainstacks_core.stacks.frozen_bank.FrozenBank` is moved
    once; it stays there (stacks added later go there too, ``model.to`` leaves it).
    The forward then copies only the stacks that take part (weight != 0), one
    contiguous run at a time, for that call only (from page-locked memory when a
    GPU exists). ``device=None`` puts the stacks back with their layers and lets
    them follow ``model.to`` again. At Gemma-3-12B shapes (bf16, 10 stacks) this
    moves 5.4 GB of GPU memory to the host.

    Returns:
        Bytes of frozen-stack buffers now on the chosen device.
    """
    total = 0
    for layer in stacked_layers(model).values():
        layer.frozen.place(layer.device if device is None else device)
        if device is None:
            layer.frozen.home = None
        total += layer.frozen.nbytes()
    log.info("frozen stacks: %.1f MB on %s", total / 1e6, device or "their layers' devices")
    return total


def stack_ids(model: nn.Module) -> list[str]:
    """Ids of all frozen stacks, in the order they were added."""
    layers = list(stacked_layers(model).values())
    return list(layers[0].frozen) if layers else []


@contextlib.contextmanager
def only_stacks(model: nn.Module, keep: Sequence[str] | None) -> Iterator[None]:
    """Temporarily give weight 1 to the stacks in ``keep`` and 0 to all others.

    ``keep=None`` keeps every stack (ungated mode); ``keep=[]`` is the bare base.
    """
    layers = list(stacked_layers(model).values())
    saved = [dict(layer.weights) for layer in layers]
    try:
        for layer in layers:
            layer.set_weights({sid: 1.0 if keep is None or sid in keep else 0.0 for sid in layer.weights})
        yield
    finally:
        for layer, w in zip(layers, saved):
            layer.set_weights(w)


def set_row_weights(model: nn.Module, stack_ids: Sequence[str], weights: torch.Tensor) -> None:
    """Per-row stack weights in every layer: row b of the next forwards uses ``weights[b]``.

    One row per sequence (prompt), broadcast over its tokens, so prompts that need
    different stacks share one forward pass. Stacks not listed get weight 0 in
    every row; a stack whose column is 0 in every row is skipped (never computed).
    The weights are moved to each layer's device once here, not per forward, and
    layers holding the same stacks share one ``[B, S]`` tensor. The dict weights
    come back with :func:`clear_row_weights`.

    Args:
        model: a model with injected layers.
        stack_ids: the stacks the columns refer to (frozen or the active one).
        weights: ``[batch, len(stack_ids)]``.

    Raises:
        ValueError: wrong shape, duplicate ids, or an id a layer does not hold.
    """
    ids = list(stack_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate stack ids in {ids}")
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.ndim != 2 or weights.shape[1] != len(ids):
        raise ValueError(f"row weights must be [batch, {len(ids)}], got {tuple(weights.shape)}")
    nonzero = (weights != 0).any(dim=0).tolist()  # one host read per call, none per forward
    shared: dict = {}
    for layer in stacked_layers(model).values():
        layer.set_row_weights(ids, weights, nonzero=nonzero, shared=shared)


def clear_row_weights(model: nn.Module) -> None:
    """Back to the per-stack dict weights in every layer."""
    for layer in stacked_layers(model).values():
        layer.clear_row_weights()


@contextlib.contextmanager
def row_weights(model: nn.Module, stack_ids: Sequence[str], weights: torch.Tensor) -> Iterator[None]:
    """:func:`set_row_weights` for the duration of a ``with`` block, then the previous weights."""
    layers = list(stacked_layers(model).values())
    saved = [(layer._rows, layer._plan) for layer in layers]
    set_row_weights(model, stack_ids, weights)
    try:
        yield
    finally:
        for layer, (rows, plan) in zip(layers, saved):
            if rows is None:
                layer.clear_row_weights()
            else:
                layer._rows, layer._plan = rows, plan


def collect_aux_loss(model: nn.Module, reduction: str = "sum") -> torch.Tensor | None:
    """Load-balance loss of the active stack over every wrapped projection of the last forward.

    Args:
        model: the injected model.
        reduction: "sum" over the projections (the paper: each router gets the full
            balancing gradient) or "mean".
    """
    losses = [layer.active.last_aux_loss for layer in stacked_layers(model).values()
              if layer.active is not None and layer.active.last_aux_loss is not None]
    if not losses:
        return None
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    total = torch.stack(losses)
    return total.sum() if reduction == "sum" else total.mean()


def active_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of the active stack."""
    return [p for layer in stacked_layers(model).values() if layer.active is not None
            for p in layer.active.parameters()]
