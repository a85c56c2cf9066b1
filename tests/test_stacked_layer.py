"""StackedMoELoRALayer and model-level stack operations on a tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch

from brainstacks_core.stacks.inject import (
    add_active_stack,
    collect_aux_loss,
    freeze_active_stack,
    inject_stacks,
    only_stacks,
    set_stack_weights,
    stacked_layers,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig, project_out

CFG = MoELoRAConfig(num_experts=4, rank=4, alpha=8)


def _randomise_active(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in stacked_layers(model).values():
            layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 0.2)


def _add_frozen(model, sid, seed, bases=None):
    add_active_stack(model, sid, bases=bases, seed=seed)
    _randomise_active(model, seed)
    freeze_active_stack(model)


def test_zero_init_stack_leaves_logits_identical(tiny_llama, input_ids):
    base = tiny_llama(input_ids).logits
    inject_stacks(tiny_llama, CFG)
    add_active_stack(tiny_llama, "s1", seed=0)
    tiny_llama.train()
    torch.testing.assert_close(tiny_llama(input_ids).logits, base, rtol=0, atol=0)


def test_optimizer_step_moves_only_active_stack(tiny_llama, input_ids):
    inject_stacks(tiny_llama, CFG)
    _add_frozen(tiny_llama, "f1", 1)
    base_state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    frozen = {n: copy.deepcopy(l.frozen["f1"]) for n, l in stacked_layers(tiny_llama).items()}
    params = add_active_stack(tiny_llama, "a", seed=2)
    opt = torch.optim.AdamW(params, lr=1e-2)
    tiny_llama.train()
    for _ in range(2):
        out = tiny_llama(input_ids, labels=input_ids)
        loss = out.loss + 0.01 * collect_aux_loss(tiny_llama)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = tiny_llama.state_dict()
    for k, v in base_state.items():
        assert torch.equal(after[k], v), f"base parameter {k} moved"
    for n, layer in stacked_layers(tiny_llama).items():
        for part in ("lora_A", "lora_B", "router"):
            assert torch.equal(getattr(layer.frozen["f1"], part), getattr(frozen[n], part))
        assert layer.active.lora_B.abs().sum() > 0, "active stack did not train"
    assert all(not p.requires_grad for n, p in tiny_llama.named_parameters() if ".active." not in n)


def test_weight_zero_equals_stack_absent(tiny_llama, input_ids):
    inject_stacks(tiny_llama, CFG)
    _add_frozen(tiny_llama, "a", 1)
    only_a = tiny_llama(input_ids).logits
    _add_frozen(tiny_llama, "b", 2)
    set_stack_weights(tiny_llama, {"b": 0.0})
    assert torch.equal(tiny_llama(input_ids).logits, only_a)
    set_stack_weights(tiny_llama, {"b": 1.0})
    assert not torch.allclose(tiny_llama(input_ids).logits, only_a)


def test_batched_frozen_equals_loop_and_sum_of_single_stacks(tiny_llama, input_ids):
    inject_stacks(tiny_llama, CFG)
    out = {}
    layer = next(iter(stacked_layers(tiny_llama).values()))
    bases = {n: torch.linalg.qr(torch.randn(l.out_features, 3))[0].T for n, l in stacked_layers(tiny_llama).items()}
    for i, sid in enumerate(["a", "b", "c"]):
        _add_frozen(tiny_llama, sid, i + 1, bases=bases if sid == "c" else None)
    set_stack_weights(tiny_llama, {"a": 0.5, "b": 1.0, "c": 0.25})
    x = torch.randn(2, 5, layer.in_features)
    batched = layer(x)
    layer.frozen_mode = "loop"
    looped = layer(x)
    layer.frozen_mode = "batched"
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    base = layer.base_layer(x)
    parts = []
    for sid, w in [("a", 0.5), ("b", 1.0), ("c", 0.25)]:
        with only_stacks(tiny_llama, [sid]):
            parts.append(w * (layer(x) - base))
    torch.testing.assert_close(batched - base, sum(parts), rtol=1e-5, atol=1e-6)
    out["ok"] = True


def test_null_space_projection_same_in_training_and_frozen(tiny_llama, input_ids):
    inject_stacks(tiny_llama, CFG)
    layers = stacked_layers(tiny_llama)
    bases = {n: torch.linalg.qr(torch.randn(l.out_features, 4))[0].T.contiguous() for n, l in layers.items()}
    add_active_stack(tiny_llama, "p", bases=bases, seed=3)
    _randomise_active(tiny_llama, 3)
    name, layer = next(iter(layers.items()))
    x = torch.randn(3, 4, layer.in_features)
    tiny_llama.train()  # training mode: router noise on, the projection still holds
    train_delta = layer(x) - layer.base_layer(x)
    assert train_delta.abs().max() > 0 and (train_delta @ bases[name].T).abs().max() < 1e-5
    tiny_llama.eval()
    active_delta = layer(x) - layer.base_layer(x)
    assert (active_delta @ bases[name].T).abs().max() < 1e-5
    freeze_active_stack(tiny_llama)
    frozen_delta = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(frozen_delta, active_delta, rtol=1e-5, atol=1e-6)
    assert (frozen_delta @ bases[name].T).abs().max() < 1e-5
    # idempotent: projecting again changes nothing
    torch.testing.assert_close(project_out(frozen_delta, bases[name]), frozen_delta, atol=1e-5, rtol=1e-5)


def test_layer_refuses_bad_operations(tiny_llama):
    inject_stacks(tiny_llama, CFG)
    layer = next(iter(stacked_layers(tiny_llama).values()))
    layer.add_active("x")
    with pytest.raises(RuntimeError, match="already has an active"):
        layer.add_active("y")
    with pytest.raises(ValueError, match="basis must be"):
        layer.set_active_basis(torch.zeros(2, layer.out_features + 1))
