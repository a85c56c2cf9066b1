"""Experiment 1 (paper section 4.1): one MoE-LoRA stack vs a parameter-matched single LoRA.

What belongs here: training both arms from the same freshly built base on the same
data with the same trainer settings, and collecting what the paper compares:
validation-loss curves (every ``settings.eval_steps``), the train task-loss curve,
trainable parameter counts, wall time, and the first step at which MoE-LoRA's
validation loss reaches single LoRA's final validation loss (the paper: step 160
of 400).

Both arms are plain training runs: no BestStackCallback (no rollback, no early
stop), so the curves are the raw trajectories. The MoE arm's train curve is the
task loss alone (``task_loss``), not task + 0.01 x load-balance loss, which is the
"inflated training loss" artifact the paper reports; the aux loss has its own curve.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from brainstacks_core.base.baseline import count_trainable_parameters, wrap_single_lora
from brainstacks_core.stacks.inject import add_active_stack, inject_stacks
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.training.loss import completion_loss
from brainstacks_core.training.sft import SFTSettings, StackSFTTrainer, make_sft_config
from brainstacks_core.training.sft_data import to_sft_dataset

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

Curve = tuple[tuple[int, float], ...]
"""``((step, value), ...)`` in increasing step order."""


@dataclass(frozen=True)
class ArmResult:
    """One arm of Experiment 1.

    Attributes:
        name: "moe_lora" or "single_lora".
        trainable_params: trainable parameter elements (the adapter only).
        val_curve: (step, eval_loss) at every eval step; the last point is at ``max_steps``.
        train_curve: (step, task loss) at every logging step (``eval_steps // 2``).
        aux_curve: (step, load-balance loss) of the MoE arm; empty for single LoRA.
        final_val_loss: the last point of ``val_curve``.
        final_completion_loss: :func:`completion_loss` of the trained model on the
            validation rows (the number the continual pipeline decides on).
        seconds: wall time of training, in-loop evaluations included.
    """

    name: str
    trainable_params: int
    val_curve: Curve
    train_curve: Curve
    aux_curve: Curve
    final_val_loss: float
    final_completion_loss: float
    seconds: float


@dataclass(frozen=True)
class Experiment1Result:
    """Both arms and the comparison the paper draws.

    Attributes:
        moe: the MoE-LoRA arm.
        lora: the single-LoRA arm.
        moe_reaches_lora_final_at: first eval step at which MoE-LoRA's validation
            loss is <= single LoRA's final validation loss; None if never.
        lora_rank: rank of the single LoRA.
        settings: the shared trainer settings (as a dict).
        moe_config: the MoE-LoRA configuration (as a dict).
    """

    moe: ArmResult
    lora: ArmResult
    moe_reaches_lora_final_at: int | None
    lora_rank: int
    settings: dict[str, Any]
    moe_config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (curves as lists of ``[step, value]``)."""
        d = dataclasses.asdict(self)
        for arm in ("moe", "lora"):
            for key in ("val_curve", "train_curve", "aux_curve"):
                d[arm][key] = [[int(s), float(v)] for s, v in d[arm][key]]
        return d


def first_step_at_or_below(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """First step of ``curve`` whose value is <= ``target`` (None if none is)."""
    for step, value in curve:
        if value <= target:
            return int(step)
    return None


def base_checksum(model: nn.Module) -> tuple[tuple[str, tuple[int, ...], float, float], ...]:
    """Cheap per-tensor fingerprint (name, shape, sum, abs-sum in float64) of the frozen weights.

    Works on any device and on quantised weights (uint8 storage); used to check that
    the two ``build_model()`` calls gave the same base.
    """
    out = []
    for name, p in model.named_parameters():
        t = p.detach().double()
        out.append((name, tuple(p.shape), float(t.sum()), float(t.abs().sum())))
    return tuple(out)


def _curve(log_history: list[dict], key: str) -> Curve:
    return tuple((int(h["step"]), float(h[key])) for h in log_history if key in h)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train_arm(name: str, model: nn.Module, trainer_cls: type, tokenizer, train_df: pd.DataFrame,
               val_df: pd.DataFrame, settings: SFTSettings, train_key: str, **trainer_kwargs: Any) -> ArmResult:
    """Train ``model`` (adapter already attached and trainable) and collect its curves."""
    params = count_trainable_parameters(model)
    if params == 0:
        raise ValueError(f"{name}: the model has no trainable parameter")
    with tempfile.TemporaryDirectory(prefix=f"brainstacks-exp1-{name}-") as out_dir:
        trainer = trainer_cls(model=model, args=make_sft_config(settings, out_dir),
                              train_dataset=to_sft_dataset(train_df), eval_dataset=to_sft_dataset(val_df),
                              processing_class=tokenizer, **trainer_kwargs)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        history = list(trainer.state.log_history)
        if not any(h.get("step") == trainer.state.global_step and "eval_loss" in h for h in history):
            # max_steps is not a multiple of eval_steps: close the curve at the last step
            trainer.evaluate()
            history = list(trainer.state.log_history)
    model.eval()
    val_curve = _curve(history, "eval_loss")
    train_curve = _curve([h for h in history if "eval_loss" not in h], train_key)
    aux_curve = _curve([h for h in history if "eval_loss" not in h], "aux_loss")
    final_completion = completion_loss(model, tokenizer, val_df, settings.max_length)
    log.info("%s: %d trainable params, val loss %.4f after %d steps, %.1fs", name, params,
             val_curve[-1][1], val_curve[-1][0], seconds)
    del trainer
    _free_memory()
    return ArmResult(name=name, trainable_params=params, val_curve=val_curve, train_curve=train_curve,
                     aux_curve=aux_curve, final_val_loss=val_curve[-1][1],
                     final_completion_loss=final_completion, seconds=seconds)


def run_experiment1(build_model: Callable[[], PreTrainedModel], tokenizer, train_df: pd.DataFrame,
                    val_df: pd.DataFrame, settings: SFTSettings, moe: MoELoRAConfig,
                    lora_rank: int = 64) -> Experiment1Result:
    """Train an MoE-LoRA stack and a single LoRA on the same data and compare their curves.

    ``build_model`` is called once per arm under ``torch.manual_seed(settings.seed)``;
    both calls must give the same weights (checked). The MoE arm is
    ``inject_stacks`` + ``add_active_stack`` trained by :class:`StackSFTTrainer`
    (aux coefficient ``moe.aux_loss_coef``); the LoRA arm is ``wrap_single_lora``
    (rank ``lora_rank``, alpha ``moe.alpha``, targets ``moe.targets``) trained by
    trl's plain ``SFTTrainer``. Same ``SFTSettings`` for both, no BestStackCallback.

    Args:
        build_model: returns a fresh base causal LM (fp32 or 4-bit).
        tokenizer: its tokenizer, with a chat template.
        train_df: training rows (prompt/response/system).
        val_df: validation rows, evaluated every ``settings.eval_steps``.
        settings: trainer settings shared by both arms.
        moe: MoE-LoRA configuration of the stack.
        lora_rank: single-LoRA rank (paper: 64 = 4 experts x r16).

    Returns:
        The :class:`Experiment1Result`.

    Raises:
        ValueError: the two ``build_model()`` calls gave different bases, or an
            arm has nothing to train.
    """
    from trl import SFTTrainer

    torch.manual_seed(settings.seed)
    moe_model = build_model()
    fingerprint = base_checksum(moe_model)
    inject_stacks(moe_model, moe)
    add_active_stack(moe_model, "experiment1-moe", seed=settings.seed)
    moe_arm = _train_arm("moe_lora", moe_model, StackSFTTrainer, tokenizer, train_df, val_df, settings,
                         train_key="task_loss", aux_loss_coef=moe.aux_loss_coef,
                         aux_loss_reduction=moe.aux_loss_reduction)
    del moe_model
    _free_memory()

    torch.manual_seed(settings.seed)
    lora_base = build_model()
    if base_checksum(lora_base) != fingerprint:
        raise ValueError("build_model() returned different weights on its second call; both arms must start "
                         "from the same base (seed the builder)")
    torch.manual_seed(settings.seed)
    lora_model = wrap_single_lora(lora_base, rank=lora_rank, alpha=moe.alpha, targets=moe.targets)
    lora_arm = _train_arm("single_lora", lora_model, SFTTrainer, tokenizer, train_df, val_df, settings,
                          train_key="loss")
    del lora_model, lora_base
    _free_memory()

    reached = first_step_at_or_below(moe_arm.val_curve, lora_arm.final_val_loss)
    log.info("experiment 1: MoE-LoRA %.4f vs LoRA %.4f final val loss; MoE reaches LoRA's final at step %s",
             moe_arm.final_val_loss, lora_arm.final_val_loss, reached)
    return Experiment1Result(moe=moe_arm, lora=lora_arm, moe_reaches_lora_final_at=reached, lora_rank=lora_rank,
                             settings=settings.model_dump(mode="json"), moe_config=moe.to_dict())
