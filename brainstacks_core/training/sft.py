"""trl SFTTrainer for one MoE-LoRA stack: task loss + 0.01 x load-balance loss.

The load-balance loss is added inside ``compute_loss`` and the task loss and
aux loss are logged separately (``task_loss``; ``aux_loss`` = coefficient x load-balance
loss, so ``loss = task_loss + aux_loss``; ``aux_loss_unscaled``), so the reported
training loss is never the unexplained mix the paper's Experiment 1 shows (train 7.44
where the task loss was ~0.9). The per-step values stay on the device until a log. With
``eval_loss=`` every evaluation is that function's number (the completion loss of
``training.loss``), the same measure as the round's starting loss and keep decision.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from trl import SFTConfig, SFTTrainer

from brainstacks_core.stacks.inject import collect_aux_loss, stacked_layers
from brainstacks_core.training.config import SFTSettings

log = logging.getLogger(__name__)


def make_sft_config(s: SFTSettings, output_dir: str | Path) -> SFTConfig:
    """An ``SFTConfig`` that runs the same on CPU and GPU (bf16 only on CUDA).

    ``s.packing`` turns on trl's packing of the training rows into ``max_length`` blocks
    (``packing_strategy``: ``wrapped`` or ``bfd``); the evaluation set is never packed.
    """
    cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir), max_steps=s.max_steps, learning_rate=s.learning_rate,
        per_device_train_batch_size=s.batch_size, per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum, warmup_steps=s.warmup_steps, lr_scheduler_type=s.lr_scheduler,
        eval_strategy="steps", eval_steps=s.eval_steps, logging_steps=max(1, s.eval_steps // 2),
        save_strategy="no", report_to="none", max_length=s.max_length, seed=s.seed, data_seed=s.seed,
        use_cpu=not cuda, bf16=cuda, gradient_checkpointing=s.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if s.gradient_checkpointing else None,
        disable_tqdm=False, dataloader_num_workers=0, remove_unused_columns=True,
        # packing (paper 4.1) packs the training rows only; evaluations are the answer-only loss function
        packing=s.packing, packing_strategy=s.packing_strategy, eval_packing=False,
    )


@contextmanager
def declared_stack_adapters(model: torch.nn.Module) -> Iterator[None]:
    """Tell transformers, while a trainer is built, that a quantized model carries trainable adapters.

    transformers' ``Trainer.__init__`` refuses a quantized model unless it is a PEFT
    model or sets ``_hf_peft_config_loaded`` (the flag transformers' own adapter
    integration sets when an adapter is loaded): ``validate_quantization_for_training``
    in ``transformers/trainer_utils.py``. A MoE-LoRA stack is such an adapter, so the
    flag is set for the duration of the constructor only: left on, ``save_pretrained``
    would take the PEFT adapter-saving path, which does not apply to stacks (they are
    saved by ``stack_io``). Nothing is changed on an unquantized model.

    trl's ``SFTTrainer`` also casts every trainable parameter of a 4-bit model to bf16
    (its QLoRA default); the active stack's dtypes are restored afterwards, so it keeps
    fp32 master weights (AdamW updates below bf16 resolution would vanish, the reason
    trl exempts DoRA's magnitude vector) and the frozen copy is still stored in
    ``moe.frozen_dtype``. On CUDA the forward runs under bf16 autocast either way.

    Raises:
        ValueError: the quantized model has no trainable parameter (no active stack):
            it really is "purely quantized".
    """
    if not getattr(model, "is_quantized", False):
        yield
        return
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model is quantized and has no trainable parameter: add an active stack "
                         "(stacks.inject.add_active_stack) before building the trainer")
    had = model.__dict__.get("_hf_peft_config_loaded")
    dtypes = {p: p.dtype for p in model.parameters() if p.requires_grad}
    model._hf_peft_config_loaded = True
    try:
        yield
    finally:
        for p, dtype in dtypes.items():
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
        if had is None:
            del model._hf_peft_config_loaded
        else:
            model._hf_peft_config_loaded = had


class StackSFTTrainer(SFTTrainer):
    """SFTTrainer that adds the active stack's load-balance loss.

    The load-balance loss is summed over the wrapped projections (``aux_loss_reduction``,
    the paper's) and counts real tokens only: each training step hands the batch's
    ``attention_mask`` to the active stack's layers (cleared after the step, so the
    backward recomputation of gradient checkpointing sees it too).

    Args:
        aux_loss_coef: coefficient of the load-balance loss (paper: 0.01).
        aux_loss_reduction: "sum" or "mean" over the wrapped projections.
        eval_loss: ``model -> float``; when given, :meth:`evaluate` reports it as
            ``eval_loss`` instead of trl's mean of per-batch means.
        *args, **kwargs: passed to ``SFTTrainer``.
    """

    def __init__(self, *args, aux_loss_coef: float = 0.01, aux_loss_reduction: str = "sum",
                 eval_loss: Callable[[torch.nn.Module], float] | None = None, **kwargs) -> None:
        with declared_stack_adapters(kwargs["model"] if "model" in kwargs else args[0]):
            super().__init__(*args, **kwargs)
        self.stack_aux_loss_coef = aux_loss_coef
        self.stack_aux_loss_reduction = aux_loss_reduction
        self.stack_eval_loss = eval_loss
        self._stack_pending: dict[str, dict[str, list[torch.Tensor]]] = {}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """``{prefix}_loss`` from ``eval_loss`` (logged, then passed to every callback's ``on_evaluate``)."""
        if self.stack_eval_loss is None or eval_dataset is not None:
            return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                    metric_key_prefix=metric_key_prefix)
        was_training = self.model.training
        start = time.perf_counter()
        self.model.eval()
        try:
            loss = float(self.stack_eval_loss(self.model))
            metrics = {f"{metric_key_prefix}_loss": loss,
                       f"{metric_key_prefix}_runtime": round(time.perf_counter() - start, 4)}
            self.log(metrics)  # in eval mode: trl merges its eval metrics, not the train ones
        finally:
            self.model.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _set_token_mask(self, mask: torch.Tensor | None) -> None:
        for layer in stacked_layers(self.model).values():
            if layer.active is not None:
                layer.active.token_mask = None if mask is None else mask.reshape(-1).bool()

    def training_step(self, model, inputs, *args, **kwargs):
        self._set_token_mask(inputs.get("attention_mask"))
        try:
            return super().training_step(model, inputs, *args, **kwargs)
        finally:
            self._set_token_mask(None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        task_loss = result[0] if return_outputs else result
        self._stack_metric(mode, "task_loss", task_loss)
        aux = collect_aux_loss(model, self.stack_aux_loss_reduction) if mode == "train" else None
        if aux is None:
            return result
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = task_loss + self.stack_aux_loss_coef * aux / steps
        self._stack_metric(mode, "aux_loss", self.stack_aux_loss_coef * aux)
        self._stack_metric(mode, "aux_loss_unscaled", aux)
        return (loss, result[1]) if return_outputs else loss

    def _stack_metric(self, mode: str, key: str, value: torch.Tensor) -> None:
        """Keep a detached 0-d tensor on the device; :meth:`log` reads all of them at once (no per-step sync)."""
        self._stack_pending.setdefault(mode, {}).setdefault(key, []).append(value.detach().float())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Turn the pending device scalars into trl's metric lists with one host transfer, then log.

        Logged per window: ``task_loss`` (the task loss), ``aux_loss`` (the coefficient times the
        load-balance loss: what it adds to ``loss``, so ``loss = task_loss + aux_loss``) and
        ``aux_loss_unscaled`` (the load-balance loss itself, summed or averaged over the projections).
        """
        for mode, pending in self._stack_pending.items():
            for key, values in pending.items():
                if values:
                    self._metrics[mode][key].extend(torch.stack(values).cpu().tolist())
            pending.clear()
        super().log(logs, start_time)
