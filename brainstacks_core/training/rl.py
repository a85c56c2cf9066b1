"""Per-domain RL on the domain's last, active stack before it freezes (paper 6.2, Algorithm 2 line 4).

After a domain's SFT rounds (each already frozen and written: frozen weights are
immutable), :func:`run_rl_stage` adds one fresh active stack on top, zero-initialised
(an exact no-op) and null-space projected like an SFT round's, trains only that
stack with trl's ``DPOTrainer`` (chosen/rejected pairs) or ``GRPOTrainer`` (verifiable
rewards, :mod:`~brainstacks_core.training.rewards`), then freezes it. The base and
every frozen stack stay frozen (``requires_grad=False``).

**Reference model (DPO)**: ``ref_model=None`` with ``precompute_ref_log_probs=True``:
the reference log-probabilities are computed once, before the first step, by the
model itself while the RL stack is still zero, i.e. by exactly the model after SFT
(its frozen stacks on, nothing else). No second copy of the model is held.

**Guard**: :class:`RLGuardCallback` (a ``BestStackCallback``) evaluates a held-out
guard loss every ``eval_steps`` (default: every step): the DPO loss on held-out pairs
against the same reference, or minus the mean reward of greedy completions on held-out
prompts for GRPO. A guard loss more than ``spike_threshold`` above the best, or a
logged training loss that is not finite or above ``max_train_loss`` (the paper's GRPO
loss spiked to ~28 million and poisoned every later stack), stops training and
restores the best weights. The RL stack is kept when its guard loss ended below its
start (the frozen stack measured in its stored dtype), else discarded, never written.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from typing import Callable

import pandas as pd
import torch
from torch import nn

from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, remove_stack
from brainstacks_core.training.best_stack import BestStackCallback
from brainstacks_core.training.boosting import DomainData, RoundRecord
from brainstacks_core.training.config import DPOSettings, GRPOSettings, TrainingConfig
from brainstacks_core.training.loss import completion_loss, per_row_completion_nll
from brainstacks_core.training.rewards import grpo_columns, reward_function
from brainstacks_core.training.sft_data import iter_batches, to_messages, tokenize_for_loss

log = logging.getLogger(__name__)


class RLGuardCallback(BestStackCallback):
    """BestStackCallback that also stops on a training-loss spike (not finite, or above ``max_train_loss``)."""

    def __init__(self, *args, max_train_loss: float = 1e4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_train_loss = max_train_loss

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if self.armed and loss is not None and (not math.isfinite(loss) or abs(loss) > self.max_train_loss):
            self.outcome.stop_reason = f"train loss spike: {loss:.4g} at step {state.global_step}"
            log.warning("%s; restoring best weights", self.outcome.stop_reason)
            control.should_training_stop = True
        return control


def _guarded(trainer_cls: type) -> type:
    """A trainer subclass whose ``evaluate`` reports ``guard(model)`` as ``eval_loss`` (callbacks see it)."""

    class Guarded(trainer_cls):
        def __init__(self, *args, guard: Callable[[nn.Module], float], **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.rl_guard = guard

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            was_training = self.model.training
            self.model.eval()
            try:
                metrics = {f"{metric_key_prefix}_loss": float(self.rl_guard(self.model))}
            finally:
                self.model.train(was_training)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    Guarded.__name__ = f"Guarded{trainer_cls.__name__}"
    return Guarded


# ------------------------------------------------------------------ measures
@torch.no_grad()
def sequence_logps(model: nn.Module, tokenizer, df: pd.DataFrame, max_length: int, batch_size: int = 16) -> torch.Tensor:
    """Summed log-probability of each row's response given its prompt: ``[N]`` fp32 (eval mode)."""
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = []
    try:
        for batch in iter_batches(tokenize_for_loss(tokenizer, df, max_length), batch_size, pad, device):
            nll, _ = per_row_completion_nll(model, batch)
            out.append(-nll.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def prompt_messages(row: dict) -> list[dict]:
    """The chat messages of a row's prompt (system + user), as SFT formats them."""
    return to_messages({"prompt": row["prompt"], "system": row.get("system"), "response": ""})[0]


def _as_rows(pairs: pd.DataFrame, which: str) -> pd.DataFrame:
    return pd.DataFrame({"prompt": pairs["prompt"], "response": pairs[which],
                         "system": pairs["system"] if "system" in pairs else None})


def dpo_measure(model: nn.Module, tokenizer, pairs: pd.DataFrame, ref: tuple[torch.Tensor, torch.Tensor],
                beta: float, max_length: int) -> tuple[float, float]:
    """``(DPO sigmoid loss, preference accuracy)`` of held-out pairs against reference log-probs."""
    pc = sequence_logps(model, tokenizer, _as_rows(pairs, "chosen"), max_length)
    pr = sequence_logps(model, tokenizer, _as_rows(pairs, "rejected"), max_length)
    margin = beta * ((pc - ref[0]) - (pr - ref[1]))
    return float(-nn.functional.logsigmoid(margin).mean()), float((pc - pr > 0).float().mean())


@torch.no_grad()
def greedy_completions(model: nn.Module, tokenizer, df: pd.DataFrame, max_new_tokens: int) -> list[str]:
    """Greedy answers to each row's prompt (chat template, left padding)."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    try:
        texts = [tokenizer.apply_chat_template(prompt_messages(r), tokenize=False, add_generation_prompt=True)
                 for r in df.to_dict("records")]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def mean_reward(model: nn.Module, tokenizer, rows: pd.DataFrame, reward: Callable, max_new_tokens: int) -> float:
    """Mean reward of greedy completions on ``rows`` (their reward columns as keywords)."""
    completions = greedy_completions(model, tokenizer, rows, max_new_tokens)
    columns = {c: rows[c].tolist() for c in rows.columns if c not in ("prompt", "response", "system")}
    scores = reward(prompts=rows["prompt"].tolist(), completions=completions, **columns)
    return float(sum(scores) / len(scores)) if scores else float("nan")


def _split_pairs(pairs: pd.DataFrame, n_eval: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic held-out split by record id (at most a quarter of the pairs held out)."""
    ordered = pairs.sort_values("record_id").reset_index(drop=True)
    n = max(1, min(n_eval, len(ordered) // 4))
    return ordered.iloc[n:].reset_index(drop=True), ordered.iloc[:n].reset_index(drop=True)


def _pair_dataset(pairs: pd.DataFrame):
    from datasets import Dataset

    rows = pairs.to_dict("records")
    return Dataset.from_dict({"prompt": [prompt_messages(r) for r in rows],
                              "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
                              "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows]})


def _common_args(s, out_dir: str) -> dict:
    cuda = torch.cuda.is_available()
    return dict(output_dir=out_dir, max_steps=s.steps, learning_rate=s.learning_rate, warmup_steps=s.warmup_steps,
                eval_strategy="steps", eval_steps=s.eval_steps, logging_steps=1, save_strategy="no",
                report_to="none", seed=s.seed, data_seed=s.seed, use_cpu=not cuda, bf16=cuda,
                gradient_checkpointing=False, disable_tqdm=False, dataloader_num_workers=0)


# ------------------------------------------------------------------ the stage
def run_rl_stage(model: nn.Module, tokenizer, data: DomainData, round_index: int, cfg: TrainingConfig,
                 settings: DPOSettings | GRPOSettings, bases: dict[str, torch.Tensor] | None,
                 on_frozen: Callable[[str, RoundRecord], None], pairs: pd.DataFrame | None = None,
                 callbacks: list | None = None) -> tuple[RoundRecord, dict]:
    """Train, guard, then freeze (or discard) one RL stack on top of the domain's SFT stacks.

    Args:
        model: the injected model, every SFT stack of this and earlier domains frozen.
        tokenizer: its tokenizer (chat template).
        data: the domain's data (val: the SFT loss before/after; train: GRPO prompts).
        round_index: round number of the RL stack (after the SFT rounds).
        cfg: training configuration (``spike_threshold``, ``patience``, ``seed``).
        settings: the domain's ``training.rl`` entry.
        bases: the domain's null-space rows per layer (as in its SFT rounds), or None.
        on_frozen: called with ``(stack_id, record)`` after freezing a kept stack (writes the file).
        pairs: DPO only: the prepared preference pairs (``prompt``, ``chosen``, ``rejected``, ``record_id``).
        callbacks: extra ``TrainerCallback``s.

    Returns:
        ``(record, rl entry)``: the round record (``loss_before``/``loss_after`` are the domain's
        SFT validation loss) and the RL summary written to the manifest.
    """
    t0 = time.time()
    stack_id = f"{data.domain}-r{round_index}"
    val = data.val if cfg.eval_rows is None else data.val.head(cfg.eval_rows)
    sft_loss = lambda m: completion_loss(m, tokenizer, val, cfg.sft.max_length, cfg.sft.batch_size)  # noqa: E731
    loss_before = sft_loss(model)
    add_active_stack(model, stack_id, bases=bases, seed=cfg.seed * 1000 + round_index)
    with tempfile.TemporaryDirectory(prefix="brainstacks-rl-") as out_dir:
        if settings.method == "dpo":
            if pairs is None or pairs.empty:
                raise ValueError(f"{data.domain}: DPO needs preference pairs (training.rl.{data.domain}.preferences)")
            train_pairs, held = _split_pairs(pairs, settings.eval_rows)
            ref = (sequence_logps(model, tokenizer, _as_rows(held, "chosen"), settings.max_length),
                   sequence_logps(model, tokenizer, _as_rows(held, "rejected"), settings.max_length))
            measure = lambda m: dpo_measure(m, tokenizer, held, ref, settings.beta, settings.max_length)  # noqa: E731
            metric_name = "preference accuracy"
            guard = lambda m: measure(m)[0]  # noqa: E731
            from trl import DPOConfig, DPOTrainer

            args = DPOConfig(**_common_args(settings, out_dir), per_device_train_batch_size=settings.batch_size,
                             per_device_eval_batch_size=settings.batch_size, beta=settings.beta,
                             loss_type=[settings.loss_type], max_length=settings.max_length,
                             precompute_ref_log_probs=True)
            make = lambda cb: _guarded(DPOTrainer)(  # noqa: E731
                model=model, ref_model=None, args=args, train_dataset=_pair_dataset(train_pairs),
                eval_dataset=_pair_dataset(held), processing_class=tokenizer, callbacks=cb, guard=guard)
            n_train = len(train_pairs)
        else:
            kind = settings.reward or data.domain
            reward = reward_function(kind, settings.sandbox_timeout_s)
            prompts = grpo_columns(kind, data.train.head(settings.prompts)).reset_index(drop=True)
            held = grpo_columns(kind, val).head(settings.eval_rows).reset_index(drop=True)
            if prompts.empty or held.empty:
                raise ValueError(f"{data.domain}: no row the {kind} reward can check (train {len(prompts)}, "
                                 f"val {len(held)})")
            metric_name = f"mean {kind} reward"
            measure = lambda m: (-(r := mean_reward(m, tokenizer, held, reward, settings.max_completion_length)),  # noqa: E731
                                 r)
            guard = lambda m: measure(m)[0]  # noqa: E731
            from datasets import Dataset
            from trl import GRPOConfig, GRPOTrainer

            def columns(df: pd.DataFrame) -> dict:
                cols = {c: df[c].tolist() for c in df.columns if c not in ("prompt", "response", "system")}
                return {"prompt": [prompt_messages(r) for r in df.to_dict("records")], **cols}

            args = GRPOConfig(**_common_args(settings, out_dir),
                              per_device_train_batch_size=settings.batch_size * settings.num_generations,
                              per_device_eval_batch_size=settings.batch_size * settings.num_generations,
                              num_generations=settings.num_generations,
                              max_completion_length=settings.max_completion_length,
                              temperature=settings.temperature, beta=settings.beta)
            make = lambda cb: _guarded(GRPOTrainer)(  # noqa: E731
                model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_dict(columns(prompts)),
                eval_dataset=Dataset.from_dict(columns(held.head(1))), processing_class=tokenizer, callbacks=cb,
                guard=guard)
            n_train = len(prompts)
        guard_before, metric_before = measure(model)
        spike = settings.spike_threshold or cfg.spike_threshold
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        callback = RLGuardCallback(params, guard_before, spike, cfg.patience, max_train_loss=settings.max_train_loss)
        trainer = make([callback, *(callbacks or [])])
        trainer.train()
        train_log = [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]
    model.eval()
    freeze_active_stack(model)
    guard_after, metric_after = measure(model)
    loss_after = sft_loss(model)
    out = callback.outcome
    rec = RoundRecord(domain=data.domain, round=round_index, stack_id=stack_id, status="frozen",
                      loss_before=loss_before, loss_after=loss_after, reason=f"rl {settings.method}: {out.stop_reason}",
                      history=out.history, train_log=train_log)
    if not guard_after < guard_before:
        remove_stack(model, stack_id)
        rec.status = "discarded"
        rec.reason = (f"rl {settings.method}: guard loss did not improve: {guard_after:.4f} >= {guard_before:.4f} "
                      f"({out.stop_reason})")
        log.warning("%s discarded: %s", stack_id, rec.reason)
    else:
        on_frozen(stack_id, rec)
        log.info("%s (%s) frozen: guard %.4f -> %.4f, %s %.4f -> %.4f", stack_id, settings.method, guard_before,
                 guard_after, metric_name, metric_before, metric_after)
    rec.seconds = time.time() - t0
    entry = {"method": settings.method, "stack_id": stack_id, "round": round_index, "status": rec.status,
             "reason": rec.reason, "train_rows": n_train, "held_out_rows": len(held), "metric": metric_name,
             "before": {"val_loss": loss_before, "guard_loss": guard_before, "metric": metric_before},
             "after": {"val_loss": loss_after, "guard_loss": guard_after, "metric": metric_after},
             "best_step": out.best_step, "stop_reason": out.stop_reason, "seconds": rec.seconds,
             "version": rec.version}
    return rec, entry
