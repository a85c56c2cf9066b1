"""Load-balance loss: summed over the wrapped projections (the paper), padding positions excluded."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from brainstacks_core.stacks.moe_lora import load_balance_loss, top_k_gates


def test_masked_rows_take_no_part():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, generator=g, requires_grad=True)
    _, idx = top_k_gates(logits, 2)
    mask = torch.tensor([1, 1, 1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    want = load_balance_loss(logits[mask], idx[mask], 4)  # naive: only the real rows
    got = load_balance_loss(logits, idx, 4, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(load_balance_loss(logits, idx, 4), want)
    got.backward()
    assert logits.grad[~mask].abs().max() == 0 and logits.grad[mask].abs().max() > 0
    with pytest.raises(ValueError, match="token mask"):
        load_balance_loss(logits, idx, 4, mask[:5])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_trainer_sums_the_padding_free_loss_over_projections(tmp_path, reduction):
    from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
    from brainstacks_core.stacks.inject import add_active_stack, inject_stacks, stacked_layers
    from brainstacks_core.stacks.moe_lora import MoELoRAConfig
    from brainstacks_core.training.sft import SFTSettings, StackSFTTrainer, make_sft_config
    from brainstacks_core.training.sft_data import to_sft_dataset

    df = pd.DataFrame([{"prompt": f"Say {i}.", "response": " ".join([str(i)] * (1 + i % 7)), "system": None}
                       for i in range(8)])  # different lengths: every batch is padded
    tok = train_tokenizer([f"{r.prompt} {r.response}" for r in df.itertuples()], 300)
    model = build_tiny_llama(TinyBaseConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1), tok)
    inject_stacks(model, MoELoRAConfig(num_experts=4, rank=2, alpha=4))
    add_active_stack(model, "s", seed=0)
    layers = stacked_layers(model)
    seen = []

    def hook(module, inputs, _out):
        if module.training:  # not the evaluation forwards
            seen.append((module.last_aux_loss.detach().clone(), module.token_mask.clone(), inputs[0].shape[0]))

    for layer in layers.values():
        layer.active.register_forward_hook(hook)
    trainer = StackSFTTrainer(model=model, args=make_sft_config(
        SFTSettings(max_steps=1, eval_steps=1, batch_size=8, learning_rate=1e-3, warmup_steps=0), tmp_path),
        train_dataset=to_sft_dataset(df), eval_dataset=to_sft_dataset(df), processing_class=tok,
        aux_loss_coef=0.01, aux_loss_reduction=reduction)
    trainer.train()
    assert len(seen) == len(layers) == 7
    per_layer = torch.stack([a for a, _, _ in seen])
    for _, mask, n in seen:  # the batch's attention mask reached every layer; padding is excluded
        assert mask.numel() == n and 0 < mask.sum() < n
    want = per_layer.sum() if reduction == "sum" else per_layer.mean()
    (logged,) = [h for h in trainer.state.log_history if "aux_loss" in h]
    assert abs(logged["aux_loss_unscaled"] - want.item()) < 1e-5
    assert abs(logged["aux_loss"] - 0.01 * want.item()) < 1e-7  # what the aux term adds, coefficient applied
    assert abs(logged["loss"] - (logged["task_loss"] + logged["aux_loss"])) < 1e-3  # the log adds up
    assert all(layer.active.token_mask is None for layer in layers.values())  # cleared after the step
