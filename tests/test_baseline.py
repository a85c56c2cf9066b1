"""Single-LoRA baseline: config, parameter accounting, zero-init, frozen base."""

from __future__ import annotations

import pytest
import torch
from tiny_models import PROJECTIONS, TINY_MODELS, VOCAB

from brainstacks_core.base.baseline import (
    count_trainable_parameters,
    lora_parameter_count,
    matched_rank,
    moe_lora_parameter_count,
    single_lora_config,
    wrap_single_lora,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig, MoELoRADelta

RANK = 8


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))  # (B, T)


def naive_lora_count(config, rank: int) -> int:
    """Reference: r * (in + out) for the 7 projections of every layer, from the HF config."""
    h, inter = config.hidden_size, config.intermediate_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]
    return config.num_hidden_layers * sum(rank * (i + o) for i, o in shapes)


def test_single_lora_config():
    cfg = single_lora_config()
    assert cfg.r == 64 and cfg.use_rslora and cfg.lora_alpha == 16.0 and cfg.bias == "none"
    assert set(cfg.target_modules) == set(PROJECTIONS)
    with pytest.raises(ValueError):
        single_lora_config(rank=0)


def test_matched_rank():
    assert matched_rank() == 64 == matched_rank(num_experts=4, rank=16)
    assert matched_rank(2, 8) == 16
    with pytest.raises(ValueError):
        matched_rank(0, 16)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_trainable_parameters_match_the_analytic_formula(name):
    base = TINY_MODELS[name]()
    expected = naive_lora_count(base.config, RANK)
    assert lora_parameter_count(base, RANK) == expected
    peft_model = wrap_single_lora(base, rank=RANK)
    assert count_trainable_parameters(peft_model) == expected
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)


def test_paper_parameter_counts_on_tinyllama_shapes():
    """Experiment 1: single LoRA r64 = 50.5M, MoE-LoRA 4 x r16 = 53.6M on TinyLlama-1.1B."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    single = lora_parameter_count(model, matched_rank(4, 16))
    moe = moe_lora_parameter_count(model, num_experts=4, rank=16)
    assert single == naive_lora_count(config, 64) == 50_462_720
    assert round(single / 1e6, 1) == 50.5 and round(moe / 1e6, 1) == 53.6
    assert moe - single == 22 * 2 * 4 * (6 * 2048 + 5632)  # only the routers differ


def test_moe_formula_matches_the_moe_module():
    base = TINY_MODELS["llama"]()
    moe_cfg = MoELoRAConfig(num_experts=4, rank=4)
    actual = sum(
        sum(p.numel() for p in MoELoRADelta(m.in_features, m.out_features, moe_cfg).parameters())
        for n, m in base.named_modules() if n.rsplit(".", 1)[-1] in PROJECTIONS
    )
    assert moe_lora_parameter_count(base, num_experts=4, rank=4) == actual


def test_wrapped_model_initially_equals_base():
    base = TINY_MODELS["qwen2"]()
    with torch.no_grad():
        expected = base(_ids()).logits
    peft_model = wrap_single_lora(base, rank=RANK)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(_ids()).logits, expected, rtol=0, atol=0)


def test_optimizer_step_moves_only_the_adapter():
    peft_model = wrap_single_lora(TINY_MODELS["llama"](), rank=RANK)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    loss = peft_model(input_ids=_ids(), labels=_ids()).loss
    loss.backward()
    optim.step()
    for n, p in peft_model.named_parameters():
        if "lora_" in n:
            continue
        torch.testing.assert_close(p, before[n], rtol=0, atol=0, msg=f"base weight {n} moved")
    moved = [n for n, p in peft_model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
    assert len(moved) == 2 * len(PROJECTIONS)


def test_wraps_a_4bit_base(tmp_path):
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    from brainstacks_core.base.loading import load_base
    from brainstacks_core.base.tiny_base import train_tokenizer

    TINY_MODELS["llama"]().save_pretrained(tmp_path)
    train_tokenizer(["the cat sees a red ball."] * 4, vocab_size=300).save_pretrained(tmp_path)
    base, _, _ = load_base(tmp_path, load_in_4bit=True)
    with torch.no_grad():
        expected = base(_ids()).logits
    peft_model = wrap_single_lora(base, rank=RANK)
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, LoraLinear4bit) and isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert count_trainable_parameters(peft_model) == naive_lora_count(base.config, RANK)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(_ids()).logits, expected)
