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


# ----------------------------------------------------------------------------- GPU hot paths (issue 8, item 7)
def _held_bytes(layer) -> dict[int, int]:
    """Distinct storages (ptr -> bytes) the layer holds outside its base and active modules."""
    held: dict[int, int] = {}

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            held[st.data_ptr()] = st.nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
            walk(vars(obj))

    walk({k: v for k, v in vars(layer).items() if k != "_modules"})
    return held


def test_frozen_stacks_are_held_once_and_never_rebuilt(tiny_llama, input_ids):
    inject_stacks(tiny_llama, CFG)
    layers = stacked_layers(tiny_llama)
    bases = {n: torch.linalg.qr(torch.randn(l.out_features, 3))[0].T for n, l in layers.items()}
    for i, sid in enumerate(["a", "b", "c"]):
        _add_frozen(tiny_llama, sid, i + 1, bases=bases if sid == "c" else None)
    ptrs = {n: (l.frozen.a.data_ptr(), l.frozen.router.data_ptr(), l.frozen.b.data_ptr()) for n, l in layers.items()}
    for weights in ({}, {"b": 0.0}, {"a": 0.0, "b": 1.0, "c": 0.0}, {"a": 1.0, "c": 1.0}):
        set_stack_weights(tiny_llama, {"a": 1.0, "b": 1.0, "c": 1.0, **weights})
        tiny_llama(input_ids)
        for name, layer in layers.items():
            bank = layer.frozen
            assert (bank.a.data_ptr(), bank.router.data_ptr(), bank.b.data_ptr()) == ptrs[name], "bank rebuilt"
            for sid in ("a", "b", "c"):  # per-stack tensors are views of the bank
                st = layer.frozen[sid]
                assert st.lora_A.untyped_storage().data_ptr() == bank.a.untyped_storage().data_ptr()
                assert st.lora_B.untyped_storage().data_ptr() == bank.b.untyped_storage().data_ptr()
                assert st.router.untyped_storage().data_ptr() == bank.router.untyped_storage().data_ptr()
            host = sum(t.numel() * t.element_size() for sid in bank for t in (bank[sid].basis, bank[sid].noise)
                       if t is not None)
            small = sum(t.numel() * t.element_size() for t in layer._w.values())
            assert sum(_held_bytes(layer).values()) == bank.nbytes() + host + small, "a second copy is held"


def test_active_basis_lives_on_the_layer_device_and_is_not_copied_per_forward(tiny_llama, input_ids, monkeypatch):
    import brainstacks_core.stacks.moe_lora as moe_lora

    inject_stacks(tiny_llama, CFG)
    layers = stacked_layers(tiny_llama)
    bases = {n: torch.linalg.qr(torch.randn(l.out_features, 3))[0].T.double() for n, l in layers.items()}
    add_active_stack(tiny_llama, "p", bases=bases, seed=3)
    stored = {id(l.active_basis) for l in layers.values()}
    for layer in layers.values():
        assert layer.active_basis.device == layer.device and layer.active_basis.dtype == torch.float32
        assert "active_basis" in dict(layer.named_buffers()) and "active_basis" not in layer.state_dict()
    seen = []
    real = moe_lora.project_out
    monkeypatch.setattr(moe_lora, "project_out", lambda b, basis: seen.append(basis) or real(b, basis))
    tiny_llama(input_ids)
    tiny_llama(input_ids)
    assert len(seen) == 2 * len(layers) and {id(b) for b in seen} == stored  # the stored tensors themselves


def test_weight_tensor_is_built_once_per_set_call(tiny_llama, input_ids):
    inject_stacks(tiny_llama, CFG)
    _add_frozen(tiny_llama, "a", 1)
    _add_frozen(tiny_llama, "b", 2)
    layer = next(iter(stacked_layers(tiny_llama).values()))
    key = (layer.device, torch.float32)
    w0 = layer._w[key]
    tiny_llama(input_ids)
    tiny_llama(input_ids)
    assert layer._w[key] is w0 and len(layer._w) == 1
    set_stack_weights(tiny_llama, {"a": 0.5})
    assert layer._w[key] is not w0
    torch.testing.assert_close(layer._w[key], torch.tensor([0.5, 1.0]) * CFG.scale)


def test_place_frozen_stacks_keeps_them_where_placed(tiny_llama):
    from brainstacks_core.stacks.inject import place_frozen_stacks

    inject_stacks(tiny_llama, CFG)
    _add_frozen(tiny_llama, "a", 1)
    layers = stacked_layers(tiny_llama)
    assert place_frozen_stacks(tiny_llama, "meta") == sum(l.frozen.nbytes() for l in layers.values()) > 0
    _add_frozen(tiny_llama, "b", 2)  # a stack frozen later goes there too
    for layer in layers.values():
        assert layer.frozen.device.type == "meta" and layer.device.type == "cpu"
        assert all(layer.frozen[s].lora_B.device.type == "meta" for s in ("a", "b"))
    tiny_llama.to("cpu")  # model.to leaves placed stacks alone
    assert all(l.frozen.device.type == "meta" for l in layers.values())


def test_frozen_stacks_follow_model_to_unless_placed(tiny_llama):
    inject_stacks(tiny_llama, CFG)
    _add_frozen(tiny_llama, "a", 1)
    tiny_llama.to("meta")
    for layer in stacked_layers(tiny_llama).values():
        assert layer.frozen.device.type == "meta" and layer._w[(layer.device, torch.float32)].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_frozen_stacks_on_cpu_match_on_gpu_and_move_only_what_is_needed(tiny_llama, input_ids, monkeypatch):
    from brainstacks_core.stacks.frozen_bank import FrozenBank
    from brainstacks_core.stacks.inject import place_frozen_stacks

    inject_stacks(tiny_llama, CFG)
    for i, sid in enumerate(["a", "b", "c"]):
        _add_frozen(tiny_llama, sid, i + 1)
    tiny_llama.cuda()
    ids = input_ids.cuda()
    set_stack_weights(tiny_llama, {"b": 0.0})
    with torch.no_grad():
        on_gpu = tiny_llama(ids).logits
        place_frozen_stacks(tiny_llama, "cpu")
        ranges = []
        run = FrozenBank.run
        monkeypatch.setattr(FrozenBank, "run", lambda self, s, e, *a: ranges.append((s, e)) or run(self, s, e, *a))
        on_cpu = tiny_llama(ids).logits
    assert all(l.frozen.device.type == "cpu" for l in stacked_layers(tiny_llama).values())
    assert set(ranges) == {(0, 1), (2, 3)}  # b is never moved
    torch.testing.assert_close(on_cpu, on_gpu)
