"""trl SFTTrainer for one MoE-LoRA stack: task loss + 0.01 x load-balance loss.

The load-balance loss is added inside ``compute_loss`` and the task loss and
aux loss are logged separately (``task_loss``, ``aux_loss``), so the reported
training loss is not the inflated mix the paper's Experiment 1 shows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from brainstacks_core.stacks.inject import collect_aux_loss
from brainstacks_core.training.config import SFTSettings

log = logging.getLogger(__name__)


def make_sft_config(s: SFTSettings, output_dir: str | Path) -> SFTConfig:
    """An ``SFTConfig`` that runs the same on CPU and GPU (bf16 only on CUDA)."""
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
    )


class StackSFTTrainer(SFTTrainer):
    """SFTTrainer that adds the active stack's load-balance loss.

    Args:
        aux_loss_coef: coefficient of the load-balance loss (paper: 0.01).
        *args, **kwargs: passed to ``SFTTrainer``.
    """

    def __init__(self, *args, aux_loss_coef: float = 0.01, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stack_aux_loss_coef = aux_loss_coef

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        task_loss = result[0] if return_outputs else result
        self._metrics[mode]["task_loss"].append(task_loss.detach().float().item())
        aux = collect_aux_loss(model) if mode == "train" else None
        if aux is None:
            return result
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = task_loss + self.stack_aux_loss_coef * aux / steps
        self._metrics[mode]["aux_loss"].append(aux.detach().float().item())
        return (loss, result[1]) if return_outputs else loss
