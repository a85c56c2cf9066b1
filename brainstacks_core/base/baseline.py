"""The single-LoRA baseline (paper section 4.1, Experiment 1) and parameter accounting.

What belongs here: the PEFT ``LoraConfig`` of the parameter-matched single LoRA
(rank 64, rsLoRA, all seven projections), wrapping a base with it, and the
analytic parameter counts that make "parameter-matched" checkable.

Parameter matching: an MoE-LoRA projection with E experts of rank r holds
``E * r * (in + out)`` expert parameters, exactly those of one LoRA of rank
``E * r``; the router adds ``E * in`` (gate) plus ``E * in`` (Shazeer noise
projection). On TinyLlama-1.1B that is 50.46M for single LoRA r=64 and 53.61M for
MoE-LoRA 4 x r16, the paper's 50.5M vs 53.6M.

References: Hu et al. 2022 (LoRA); Kalajdzievski 2023 (rsLoRA, scale alpha/sqrt(r)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from torch import nn

from brainstacks_core.stacks.moe_lora import DEFAULT_TARGETS

if TYPE_CHECKING:  # peft imports transformers, which is slow; load it only where needed
    from peft import LoraConfig, PeftModel


def matched_rank(num_experts: int = 4, rank: int = 16) -> int:
    """Rank of the single LoRA that matches an MoE-LoRA's expert parameters.

    E experts of rank r on a projection ``in -> out`` hold ``E * r * (in + out)``
    parameters, the same as one LoRA of rank ``E * r``: the paper's 4 x r16
    MoE-LoRA is matched by a rank-64 LoRA. The MoE router's extra
    ``2 * E * in`` per projection (gate + noise) is not matched; it is small
    (about 6% on TinyLlama-1.1B, see :func:`moe_lora_parameter_count`).

    Args:
        num_experts: E, experts per projection.
        rank: r, rank of each expert.

    Returns:
        ``num_experts * rank``.
    """
    if num_experts < 1 or rank < 1:
        raise ValueError(f"num_experts and rank must be >= 1, got {num_experts}, {rank}")
    return num_experts * rank


def single_lora_config(
    rank: int = 64,
    alpha: float = 16.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
) -> LoraConfig:
    """PEFT config of the single-LoRA baseline.

    Args:
        rank: LoRA rank r (64 matches 4 experts x r16).
        alpha: rsLoRA alpha; the adapter scale is ``alpha / sqrt(rank)``. The
            default equals ``MoELoRAConfig.alpha`` so both arms share the value.
        targets: Projection names to adapt (default: all seven).
        dropout: LoRA dropout on the adapter input.

    Returns:
        A ``peft.LoraConfig`` with ``use_rslora=True``, no bias, causal-LM task.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout,
        use_rslora=True, bias="none", task_type="CAUSAL_LM",
    )


def wrap_single_lora(
    model: nn.Module, rank: int = 64, alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS
) -> PeftModel:
    """Wrap ``model`` (fp32 or 4-bit) with the single-LoRA baseline.

    The base is modified in place (its projections become ``lora.Linear`` /
    ``lora.Linear4bit``) and frozen; only the ``lora_A``/``lora_B`` weights train.
    ``B`` starts at zero, so the wrapped model initially equals the base.

    Args:
        model: A causal LM whose projections are named as in ``targets``.
        rank: LoRA rank.
        alpha: rsLoRA alpha.
        targets: Projection names to adapt.

    Returns:
        The ``PeftModel``.
    """
    from peft import get_peft_model

    return get_peft_model(model, single_lora_config(rank=rank, alpha=alpha, targets=targets))


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of parameter elements with ``requires_grad`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def _target_shapes(model: nn.Module, targets: Sequence[str]) -> list[tuple[int, int]]:
    """``(in_features, out_features)`` of every module whose last name part is a target."""
    wanted = set(targets)
    shapes = [
        (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in wanted and hasattr(module, "in_features") and hasattr(module, "out_features")
    ]
    if not shapes:
        raise ValueError(f"no module of {type(model).__name__} matches targets {sorted(wanted)}")
    return shapes


def lora_parameter_count(model: nn.Module, rank: int = 64, targets: Sequence[str] = DEFAULT_TARGETS) -> int:
    """Analytic trainable parameters of a rank-``rank`` LoRA: ``sum r * (in + out)``.

    Args:
        model: The unwrapped base (a meta-device model works: only shapes are read).
        rank: LoRA rank.
        targets: Projection names.

    Returns:
        The parameter count over every targeted projection of every layer.
    """
    return sum(rank * (fan_in + fan_out) for fan_in, fan_out in _target_shapes(model, targets))


def moe_lora_parameter_count(
    model: nn.Module,
    num_experts: int = 4,
    rank: int = 16,
    targets: Sequence[str] = DEFAULT_TARGETS,
    noisy_router: bool = True,
) -> int:
    """Analytic parameters of one MoE-LoRA stack: experts plus router.

    Per projection ``in -> out``: ``E * r * (in + out)`` (experts) +
    ``E * in`` (router gate) + ``E * in`` (noise projection, if ``noisy_router``).

    Args:
        model: The unwrapped base (only shapes are read).
        num_experts: E.
        rank: r per expert.
        targets: Projection names.
        noisy_router: Whether the router has the Shazeer noise projection.

    Returns:
        The parameter count over every targeted projection of every layer.
    """
    router_mats = 2 if noisy_router else 1
    return sum(
        num_experts * rank * (fan_in + fan_out) + router_mats * num_experts * fan_in
        for fan_in, fan_out in _target_shapes(model, targets)
    )
