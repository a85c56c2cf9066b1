"""The real trainer path (a boosting round with trl's SFTTrainer) on an NF4 4-bit tiny base on CPU."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from brainstacks_core.base.loading import load_base
from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_base
from brainstacks_core.stacks.inject import inject_stacks, stacked_layers
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.training.boosting import DomainData, train_round
from brainstacks_core.training.config import TrainingConfig
from brainstacks_core.training.sft import SFTSettings

TINY = TinyBaseConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pretrain_steps=5, pretrain_batch_size=8, seq_len=64, seed=0)
MOE = MoELoRAConfig(num_experts=2, rank=4, alpha=8, top_k=1)


def _data() -> DomainData:
    rows = [{"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}.", "system": None}
            for a in range(6) for b in range(6)]
    df = pd.DataFrame(rows)
    return DomainData("math", df.iloc[:28], df.iloc[28:], "math-train-v1", "math-val-v1")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    data = _data()
    texts = [f"{r.prompt}\n{r.response}" for r in data.train.itertuples()]
    return build_tiny_base(texts, TINY, tmp_path_factory.mktemp("nf4") / "base").path


def test_boosting_round_trains_a_stack_on_an_nf4_base(base_dir, tmp_path):
    import bitsandbytes as bnb

    model, tok, _ = load_base(base_dir, load_in_4bit=True)
    assert model.is_quantized
    inject_stacks(model, MOE)
    layers = stacked_layers(model)
    assert all(isinstance(layer.base_layer, bnb.nn.Linear4bit) for layer in layers.values())
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainingConfig(max_rounds=1, eval_rows=8, null_space=False,
                         sft=SFTSettings(max_steps=2, eval_steps=1, learning_rate=1e-2, batch_size=4,
                                         warmup_steps=0, max_length=48))
    frozen = []
    rec = train_round(model, tok, _data(), 1, cfg, MOE, None, lambda sid, r: frozen.append(sid))
    assert [h["step"] for h in rec.train_log if "loss" in h] == [1, 2]  # two real optimizer steps
    assert len(rec.history) == 2 and all(torch.isfinite(torch.tensor(v)) for _, v in rec.history)
    for n, p in model.named_parameters():  # the 4-bit base did not move
        if n in base_before:
            assert torch.equal(p, base_before[n]), n
    assert not getattr(model, "_hf_peft_config_loaded", False)  # the adapter marker is scoped to the trainer
    if rec.status == "frozen":
        assert frozen == ["math-r1"]
        assert all("math-r1" in layer.frozen for layer in layers.values())


def test_trainer_keeps_the_active_stack_in_fp32_and_refuses_a_bare_quantized_model(base_dir, tmp_path):
    from brainstacks_core.stacks.inject import add_active_stack
    from brainstacks_core.training.sft import StackSFTTrainer, make_sft_config
    from brainstacks_core.training.sft_data import to_sft_dataset

    model, tok, _ = load_base(base_dir, load_in_4bit=True)
    inject_stacks(model, MOE)
    args = make_sft_config(SFTSettings(max_steps=1, batch_size=4, max_length=48), tmp_path)
    train = to_sft_dataset(_data().train)
    with pytest.raises(ValueError, match="no trainable parameter"):
        StackSFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=train, processing_class=tok)
    add_active_stack(model, "s", seed=0)
    StackSFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=train, processing_class=tok)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # trl's bf16 cast undone
