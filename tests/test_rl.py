"""Per-domain RL on the active stack (paper 6.2): real trl DPO/GRPO trainers on a tiny base, the spike guard."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import TrainerCallback

from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
from brainstacks_core.data.generators import generate
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, inject_stacks, stacked_layers
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.stack_io import load_stack, stack_tensors
from brainstacks_core.training.boosting import DomainData
from brainstacks_core.training.config import DPOSettings, SFTSettings, TrainingConfig
from brainstacks_core.training.continual import RunContext, run_continual
from brainstacks_core.training.rl import run_rl_stage

MOE = MoELoRAConfig(num_experts=2, rank=4, alpha=8)
SFT = SFTSettings(max_steps=6, eval_steps=3, learning_rate=1e-2, batch_size=8, warmup_steps=1, max_length=80)


def _domain(name: str, gen: str, n: int = 80) -> DomainData:
    df = pd.DataFrame(generate(gen, n, 0))[["prompt", "response"]].assign(system=None)
    return DomainData(name, df.iloc[:-20].reset_index(drop=True), df.iloc[-20:].reset_index(drop=True),
                      f"{name}-train-v1", f"{name}-val-v1")


@pytest.fixture(scope="module")
def setup():
    data = [_domain("chat", "chat"), _domain("math", "math")]
    tok = train_tokenizer([f"{r.prompt} {r.response}" for d in data for r in d.train.itertuples()], 320)
    return data, tok


def _model(tok):
    model = build_tiny_llama(TinyBaseConfig(vocab_size=320, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, seed=0), tok)
    inject_stacks(model, MOE)
    return model


def test_dpo_and_grpo_train_only_the_rl_stack_and_record_lineage(setup, tmp_path):
    data, tok = setup
    model = _model(tok)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if ".stacked" not in n and "stack" not in n}
    cfg = TrainingConfig(max_rounds=1, eval_rows=12, null_space_val_rows=12, sft=SFT, rl={
        "chat": {"method": "dpo", "steps": 3, "learning_rate": 2e-2, "eval_rows": 6,
                 "preferences": [{"kind": "generated", "generator": "chat_pairs", "rows": 24}]},
        "math": {"method": "grpo", "steps": 2, "num_generations": 2, "max_completion_length": 4, "batch_size": 1,
                 "prompts": 4, "eval_rows": 2}})
    cat = Catalog(tmp_path / "catalog.duckdb")
    m = run_continual(model, tok, data, cfg, MOE, RunContext("t", "main", tmp_path / "run", "fp", catalog=cat))
    chat, math = m["domains"]["chat"], m["domains"]["math"]
    assert chat["rl"]["method"] == "dpo" and math["rl"]["method"] == "grpo"
    # DPO starts at log 2 exactly: the RL stack is zero and the reference is the model after SFT
    assert chat["rl"]["before"]["guard_loss"] == pytest.approx(0.693147, abs=1e-5)
    rl_round = chat["rounds"][-1]
    assert rl_round["stack_id"] == "chat-r2" and rl_round["reason"].startswith("rl dpo")
    assert any("rewards/margins" in h for h in rl_round["train_log"])  # trl's DPOTrainer ran
    assert any("reward" in h for h in math["rounds"][-1]["train_log"]) or math["rl"]["status"] == "discarded"
    assert math["rl"]["train_rows"] == 4
    # the base never moved, and the SFT stack still equals its file written before RL
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    sft = chat["rounds"][0]
    on_disk = load_stack(sft["file"]).tensors
    in_model = stack_tensors(model, "chat-r1")[0]
    assert all(torch.equal(on_disk[k], in_model[k]) for k in on_disk)
    # lineage: the RL result's upstream is the preference data, the SFT stack and the domain data
    assert chat["rl"]["preference_version"] in chat["rl"]["upstream"]
    assert sft["version"] in chat["rl"]["upstream"]
    art = cat.latest("rl://t/main/chat")
    ups = {u["version"] for u in cat.upstream(art["version"])}
    assert {chat["rl"]["preference_version"], sft["version"]} <= ups
    if chat["rl"]["status"] == "frozen":
        stack_inputs = {u["version"] for u in cat.upstream(rl_round["version"])}
        assert chat["rl"]["preference_version"] in stack_inputs
        assert cat.get(rl_round["version"])["kind"] == "stack"


class _SpikeAt(TrainerCallback):
    """Records the active stack at each evaluation; at step ``k`` corrupts it (the guard must undo that)."""

    def __init__(self, model, k: int) -> None:
        self.model, self.k = model, k
        self.seen: list[tuple[float, dict]] = []
        self.final: dict | None = None

    def _active(self) -> dict:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, **kw):
        self.start = self._active()

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.k:
            with torch.no_grad():
                for p in self.model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p) * 3.0)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self.seen.append((float(metrics["eval_loss"]), self._active()))

    def on_train_end(self, args, state, control, **kw):  # runs after the guard's restore (callback order)
        self.final = self._active()


def test_a_loss_spike_at_step_k_restores_the_best_weights(setup, monkeypatch):
    import trl

    data, tok = setup
    model = _model(tok)
    add_active_stack(model, "chat-r1", seed=1)  # an SFT stack to sit on
    freeze_active_stack(model)
    k = 3
    real = trl.DPOTrainer.compute_loss

    def spiking(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = real(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self.state.global_step == k - 1:  # the k-th step's loss: the paper's GRPO spike (~28 million)
            return (out[0] * 3e7, *out[1:]) if return_outputs else out * 3e7
        return out

    monkeypatch.setattr(trl.DPOTrainer, "compute_loss", spiking)
    from brainstacks_core.data.generators import generate_pairs
    from brainstacks_core.lineage.versioning import content_hash

    pairs = pd.DataFrame(generate_pairs("chat_pairs", 24, 0)).assign(system=None)
    pairs["record_id"] = [content_hash(p, c, r) for p, c, r in zip(pairs.prompt, pairs.chosen, pairs.rejected)]
    spy = _SpikeAt(model, k)
    settings = DPOSettings(steps=6, learning_rate=2e-2, eval_rows=6, max_length=80)
    cfg = TrainingConfig(eval_rows=12, sft=SFT, spike_threshold=0.1, patience=10)
    rec, entry = run_rl_stage(model, tok, data[0], 2, cfg, settings, None, lambda sid, r: None, pairs=pairs,
                              callbacks=[spy])
    assert entry["stop_reason"].startswith("train loss spike") and f"step {k}" in entry["stop_reason"]
    assert max(h["step"] for h in rec.train_log if "step" in h) <= k  # training stopped at the spike
    # the best weights: the lowest guard loss that beat the start (else the untouched zero stack)
    best_loss, best = entry["before"]["guard_loss"], spy.start
    for loss, weights in spy.seen:
        if loss < best_loss:
            best_loss, best = loss, weights
    assert spy.final is not None and set(spy.final) == set(best)
    assert all(torch.equal(spy.final[n], best[n]) for n in best), "weights were not restored to the best"
    assert entry["after"]["guard_loss"] == pytest.approx(best_loss, abs=1e-5)
    assert "chat-r2" in next(iter(stacked_layers(model).values())).frozen or rec.status == "discarded"


def test_rl_table_shows_before_and_after_per_domain():
    from brainstacks_core.reporting.rl_table import rl_table

    m = {"domains_order": ["chat", "code"], "domains": {"chat": {"rl": {
        "method": "dpo", "stack_id": "chat-r3", "status": "frozen", "metric": "preference accuracy",
        "before": {"val_loss": 1.5, "guard_loss": 0.6931, "metric": 0.5},
        "after": {"val_loss": 1.52, "guard_loss": 0.61, "metric": 0.75}, "stop_reason": "max_steps"}},
        "code": {"rounds": []}}}
    table = rl_table(m)
    assert "| chat | dpo | chat-r3 | frozen | 1.5000 | 1.5200 | 0.6931 | 0.6100 | preference accuracy | 0.5000 | " \
           "0.7500 | max_steps |" in table
    assert "code" not in table.split("\n", 2)[2]
    assert "No per-domain RL" in rl_table({"domains_order": ["code"], "domains": {"code": {}}})
