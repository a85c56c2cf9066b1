"""Inner loop: residual boosting rounds of one domain (Brainstacks section 3.3).

Each round adds a fresh stack on top of every frozen stack, trains it with trl's
SFTTrainer (+ load-balance loss) under BestStackCallback, then freezes it and
measures the frozen stack (in its stored dtype). Which rounds are kept is
``training.keep_rule``: ``improving`` keeps a round only if the validation loss
improved on the round's starting loss, else removes it again and never writes it
(the reason is recorded); ``paper`` (Algorithm 1) keeps every round. Rounds
continue while the gain is at least ``min_loss_delta``, up to ``max_rounds``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import pandas as pd
import torch
from torch import nn

from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, remove_stack
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.training.config import TrainingConfig
from brainstacks_core.training.loss import completion_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainData:
    """One domain's prepared data, with the versions lineage needs.

    ``val`` decides (early stopping, keep, null-space bases); ``test`` is only
    reported (the forgetting matrix); None falls back to ``val`` (in-memory tests).
    """

    domain: str
    train: pd.DataFrame
    val: pd.DataFrame
    train_version: str
    val_version: str
    test: pd.DataFrame | None = None
    test_version: str | None = None


@dataclass
class RoundRecord:
    """One round's result, as written to the manifest."""

    domain: str
    round: int
    stack_id: str
    status: str  # "frozen" | "discarded"
    loss_before: float
    loss_after: float
    reason: str
    history: list[tuple[int, float]] = field(default_factory=list)
    train_log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    file: str | None = None
    file_sha256: str | None = None
    file_blake3: str | None = None  # the fast integrity check of loads (sha256 stays the published digest)
    version: str | None = None

    def to_dict(self) -> dict:
        """JSON-shaped (lists, not tuples), so a reloaded manifest compares equal."""
        d = asdict(self)
        d["history"] = [[int(s), float(v)] for s, v in self.history]
        return d


def train_round(model: nn.Module, tokenizer, data: DomainData, round_index: int, cfg: TrainingConfig,
                moe: MoELoRAConfig, bases: dict[str, torch.Tensor] | None,
                on_frozen: Callable[[str, RoundRecord], None], callbacks: list | None = None) -> RoundRecord:
    """Train, then freeze or discard, one boosting round.

    Args:
        model: the injected model with every earlier stack frozen and attached.
        tokenizer: its tokenizer.
        data: the domain's train/val data.
        round_index: 1-based round number.
        cfg: training configuration.
        moe: MoE-LoRA configuration (for the aux loss coefficient).
        bases: null-space rows per layer for this domain, or None.
        on_frozen: called with ``(stack_id, record)`` right after freezing, to
            write the stack file and register it (sets record.file etc.).
        callbacks: extra ``TrainerCallback``s (e.g. ``progress.ProgressCallback``).

    Returns:
        The round's record.
    """
    # the trainer stack (transformers.Trainer, trl: seconds to import) only when a round trains
    from brainstacks_core.training.best_stack import BestStackCallback
    from brainstacks_core.training.sft import StackSFTTrainer, make_sft_config
    from brainstacks_core.training.sft_data import to_sft_dataset

    t0 = time.time()
    stack_id = f"{data.domain}-r{round_index}"
    val = data.val if cfg.eval_rows is None else data.val.head(cfg.eval_rows)
    add_active_stack(model, stack_id, bases=bases, seed=cfg.seed * 1000 + round_index)

    def measure(m: nn.Module) -> float:  # the one loss of the round: start, every evaluation, keep decision
        return completion_loss(m, tokenizer, val, cfg.sft.max_length, cfg.sft.batch_size)

    loss_before = measure(model)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    callback = BestStackCallback(params, loss_before, cfg.spike_threshold, cfg.patience)
    with tempfile.TemporaryDirectory(prefix="brainstacks-sft-") as out_dir:
        trainer = StackSFTTrainer(
            model=model, args=make_sft_config(cfg.sft, out_dir), train_dataset=to_sft_dataset(data.train),
            eval_dataset=to_sft_dataset(val), processing_class=tokenizer, callbacks=[callback, *(callbacks or [])],
            aux_loss_coef=moe.aux_loss_coef, aux_loss_reduction=moe.aux_loss_reduction, eval_loss=measure)
        trainer.train()
        train_log = [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]
    model.eval()
    # measure what is kept: the frozen stack, in its stored dtype (bf16 on the paper profiles)
    freeze_active_stack(model)
    loss_after = measure(model)
    rec = RoundRecord(domain=data.domain, round=round_index, stack_id=stack_id, status="frozen",
                      loss_before=loss_before, loss_after=loss_after, reason=callback.outcome.stop_reason,
                      history=callback.outcome.history, train_log=train_log)
    if cfg.keep_rule == "improving" and not loss_after < loss_before:
        remove_stack(model, stack_id)
        rec.status = "discarded"
        rec.reason = f"no improvement: {loss_after:.4f} >= {loss_before:.4f} ({callback.outcome.stop_reason})"
        log.warning("%s discarded: %s", stack_id, rec.reason)
    else:
        if not loss_after < loss_before:  # keep_rule paper: frozen anyway (Algorithm 1, line 6), then stop
            rec.reason = f"kept without improvement (keep_rule paper): {loss_after:.4f} >= {loss_before:.4f}"
        on_frozen(stack_id, rec)
        log.info("%s frozen: val loss %.4f -> %.4f", stack_id, loss_before, loss_after)
    rec.seconds = time.time() - t0
    return rec


def should_continue(rec: RoundRecord, round_index: int, cfg: TrainingConfig) -> tuple[bool, str]:
    """Whether another round follows ``rec``, and why (not)."""
    if rec.status != "frozen":
        return False, "round discarded"
    gain = rec.loss_before - rec.loss_after
    if gain < cfg.min_loss_delta:
        return False, f"gain {gain:.4f} < min_loss_delta {cfg.min_loss_delta}"
    if round_index >= cfg.max_rounds:
        return False, f"max_rounds {cfg.max_rounds} reached"
    return True, f"gain {gain:.4f}"
