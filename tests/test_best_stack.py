"""BestStackCallback: spikes (first and later evaluation) and patience restore the best weights."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import TrainerControl, TrainerState

from brainstacks_core.training.best_stack import BestStackCallback


class _Run:
    """Drives the callback like Trainer does, moving the weights between evaluations."""

    def __init__(self, begin_loss, **kw):
        self.p = {"w": torch.nn.Parameter(torch.zeros(3, 4))}
        self.cb = BestStackCallback(self.p, begin_loss, **kw)
        self.state, self.control = TrainerState(), TrainerControl()
        self.cb.on_train_begin(None, self.state, self.control)

    def evaluate(self, step, loss):
        with torch.no_grad():
            self.p["w"].fill_(float(step))  # the "training" moved the weights
        self.state.global_step = step
        self.cb.on_evaluate(None, self.state, self.control, metrics={"eval_loss": loss})
        return self.control.should_training_stop

    def end(self):
        self.cb.on_train_end(None, self.state, self.control)
        return self.p["w"].detach().clone()


def test_spike_at_first_evaluation_is_caught_and_untrained_stack_restored():
    run = _Run(begin_loss=2.0, spike_threshold=0.1)
    assert run.evaluate(10, 2.5) is True
    assert torch.equal(run.end(), torch.zeros(3, 4))  # the no-op initial stack, bit-exact
    assert run.cb.outcome.stop_reason.startswith("spike") and not run.cb.outcome.improved


def test_later_spike_restores_best_snapshot_bit_exact():
    run = _Run(begin_loss=2.0, spike_threshold=0.1)
    assert not run.evaluate(10, 1.8)
    assert not run.evaluate(20, 1.5)  # best
    assert not run.evaluate(30, 1.55)  # worse, within threshold
    assert run.evaluate(40, 1.7) is True  # 1.7 > 1.5 + 0.1
    assert torch.equal(run.end(), torch.full((3, 4), 20.0))
    out = run.cb.outcome
    assert out.best_step == 20 and out.best_loss == 1.5 and out.improved
    assert out.history == [(10, 1.8), (20, 1.5), (30, 1.55), (40, 1.7)]


def test_patience_stops_and_restores():
    run = _Run(begin_loss=2.0, patience=2, spike_threshold=1.0)
    run.evaluate(10, 1.0)
    assert not run.evaluate(20, 1.05)
    assert run.evaluate(30, 1.02) is True
    assert torch.equal(run.end(), torch.full((3, 4), 10.0))
    assert run.cb.outcome.stop_reason.startswith("patience")


def test_evaluations_outside_training_are_ignored():
    p = {"w": torch.nn.Parameter(torch.zeros(2))}
    cb = BestStackCallback(p, 1.0)
    ctl = cb.on_evaluate(None, TrainerState(), TrainerControl(), metrics={"eval_loss": 9.0})
    assert not ctl.should_training_stop and cb.outcome.history == []


@pytest.mark.slow
def test_aux_loss_changes_the_router_during_trl_training(tmp_path):
    from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
    from brainstacks_core.stacks.inject import add_active_stack, inject_stacks, stacked_layers
    from brainstacks_core.stacks.moe_lora import MoELoRAConfig
    from brainstacks_core.training.sft import SFTSettings, StackSFTTrainer, make_sft_config
    from brainstacks_core.training.sft_data import to_sft_dataset

    df = pd.DataFrame([{"prompt": f"Say {i}.", "response": f"{i} {i} {i}.", "system": None} for i in range(40)])
    tok = train_tokenizer([f"{r.prompt} {r.response}" for r in df.itertuples()], 300)
    routers = {}
    for coef in (0.0, 0.01):
        model = build_tiny_llama(TinyBaseConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1), tok)
        inject_stacks(model, MoELoRAConfig(rank=4))
        add_active_stack(model, "s", seed=0)
        grads = []
        trainer = StackSFTTrainer(model=model, args=make_sft_config(
            SFTSettings(max_steps=3, eval_steps=2, batch_size=8, learning_rate=1e-2, warmup_steps=0), tmp_path),
            train_dataset=to_sft_dataset(df), eval_dataset=to_sft_dataset(df.head(8)), processing_class=tok,
            aux_loss_coef=coef)
        layer = next(iter(stacked_layers(model).values()))
        layer.active.router.weight.register_hook(lambda g: grads.append(g.abs().sum().item()))
        trainer.train()
        routers[coef] = layer.active.router.weight.detach().clone()
        # step 1: B is zero, so the task loss gives the router no gradient; only the aux loss can
        assert len(grads) == 3 and (grads[0] > 0) == (coef > 0), grads
        assert all(g > 0 for g in grads[1:])
        logged = [h for h in trainer.state.log_history if "task_loss" in h]
        assert logged and "aux_loss" in logged[0]  # logged apart from the task loss, whatever the coefficient
    assert not torch.equal(routers[0.0], routers[0.01]), "the aux loss did not change the router"


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    import random

    rng = random.Random(seed)
    words = "alpha beta gamma delta echo forest garden harbor island jungle".split()
    return pd.DataFrame([{"prompt": f"Repeat {i}.", "response": " ".join(rng.choices(words, k=rng.randint(1, 12))),
                          "system": None} for i in range(n)])


def test_untouched_stack_evaluates_to_the_starting_loss(tmp_path):
    """One measure for the start, every evaluation and the keep decision (a global token mean)."""
    from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
    from brainstacks_core.stacks.inject import inject_stacks
    from brainstacks_core.stacks.moe_lora import MoELoRAConfig
    from brainstacks_core.training.boosting import DomainData, train_round
    from brainstacks_core.training.config import TrainingConfig
    from brainstacks_core.training.sft import SFTSettings

    train, val = _rows(16), _rows(24, seed=1)  # responses of 1-12 words: per-batch means differ
    tok = train_tokenizer([f"{r.prompt} {r.response}" for r in pd.concat([train, val]).itertuples()], 300)
    model = build_tiny_llama(TinyBaseConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1), tok)
    moe = MoELoRAConfig(num_experts=2, rank=4, alpha=8, top_k=1)
    inject_stacks(model, moe)
    cfg = TrainingConfig(max_rounds=1, eval_rows=None, null_space=False, spike_threshold=1.0, patience=10,
                         sft=SFTSettings(max_steps=4, eval_steps=2, learning_rate=0.0, batch_size=5,
                                         warmup_steps=0, max_length=48))
    rec = train_round(model, tok, DomainData("d", train, val, "t", "v"), 1, cfg, moe, None, lambda *a: None)
    assert [s for s, _ in rec.history] == [2, 4]
    for _, loss in rec.history:
        assert abs(loss - rec.loss_before) < 1e-6, (loss, rec.loss_before)
    assert abs(rec.loss_after - rec.loss_before) < 1e-6 and rec.status == "discarded"
