"""Per-row stack weights: one row per sequence, against running each row alone (issue 10, item 1)."""

from __future__ import annotations

import pytest
import torch

from brainstacks_core.stacks.frozen_bank import FrozenBank
from brainstacks_core.stacks.inject import (
    add_active_stack,
    clear_row_weights,
    freeze_active_stack,
    inject_stacks,
    row_weights,
    set_row_weights,
    set_stack_weights,
    stacked_layers,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig

CFG = MoELoRAConfig(num_experts=4, rank=4, alpha=8)
IDS = ["a", "b", "c", "act"]
# rows: a mix, one stack only, the active stack only, nothing (the bare base)
W = torch.tensor([[1.0, 0.5, 0.0, 1.0],
                  [0.0, 1.0, 0.0, 0.0],
                  [0.0, 0.0, 0.0, 0.7],
                  [0.0, 0.0, 0.0, 0.0]])


def _randomise_active(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in stacked_layers(model).values():
            layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 0.2)


def _model_with_stacks(tiny_llama):
    inject_stacks(tiny_llama, CFG)
    layers = stacked_layers(tiny_llama)
    bases = {n: torch.linalg.qr(torch.randn(l.out_features, 3))[0].T for n, l in layers.items()}
    for i, sid in enumerate(["a", "b", "c"]):
        add_active_stack(tiny_llama, sid, bases=bases if sid == "b" else None, seed=i + 1)
        _randomise_active(tiny_llama, i + 1)
        freeze_active_stack(tiny_llama)
    add_active_stack(tiny_llama, "act", seed=9)
    _randomise_active(tiny_llama, 9)
    return tiny_llama.eval()


def _ids(rows=4, t=9):
    return torch.randint(0, 96, (rows, t), generator=torch.Generator().manual_seed(5))


def _one_row_at_a_time(model, ids, weights):
    out = []
    for b in range(ids.shape[0]):
        set_stack_weights(model, dict(zip(IDS, weights[b].tolist())))
        out.append(model(ids[b:b + 1]).logits)
    set_stack_weights(model, dict.fromkeys(IDS, 1.0))
    return torch.cat(out)


@torch.no_grad()
def test_per_row_output_equals_each_row_alone(tiny_llama):
    model, ids = _model_with_stacks(tiny_llama), _ids()
    expected = _one_row_at_a_time(model, ids, W)
    set_row_weights(model, IDS, W)
    got = model(ids).logits
    clear_row_weights(model)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the last row (all zeros) is exactly the bare base
        set_stack_weights(model, dict.fromkeys(IDS, 0.0))
        torch.testing.assert_close(got[3], model(ids[3:]).logits[0], rtol=1e-5, atol=1e-6)  # batch-size-dependent BLAS order
        set_stack_weights(model, dict.fromkeys(IDS, 1.0))
    assert not torch.allclose(got[0], got[1])  # rows really differ


@torch.no_grad()
def test_batched_equals_looped_with_row_weights(tiny_llama):
    model, ids = _model_with_stacks(tiny_llama), _ids()
    w = torch.tensor([[0.3, 1.0, 2.0, 1.0], [1.0, 0.0, 0.5, 0.0], [0.0, 0.2, 1.0, 0.4], [1.0, 1.0, 1.0, 1.0]])
    with row_weights(model, IDS, w):
        batched = model(ids).logits
        for layer in stacked_layers(model).values():
            layer.frozen_mode = "loop"
        looped = model(ids).logits
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, _one_row_at_a_time(model, ids, w), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_layer_accepts_n_rows_of_in_features(tiny_llama):
    model = _model_with_stacks(tiny_llama)
    layer = next(iter(stacked_layers(model).values()))
    x = torch.randn(4, layer.in_features)  # [N, in] with N == B: one token per row
    with row_weights(model, IDS, W):
        got = layer(x)
    rows = []
    for b in range(4):
        set_stack_weights(model, dict(zip(IDS, W[b].tolist())))
        rows.append(layer(x[b:b + 1]))
    torch.testing.assert_close(got, torch.cat(rows), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["batched", "loop"])
@torch.no_grad()
def test_stack_zero_in_every_row_is_skipped_not_multiplied(tiny_llama, monkeypatch, mode):
    model, ids = _model_with_stacks(tiny_llama), _ids()
    reference = _one_row_at_a_time(model, ids, W)  # column "c" is 0 in every row of W
    layers = stacked_layers(model)
    for layer in layers.values():
        layer.frozen_mode = mode
        for part in ("lora_A", "lora_B", "router"):  # poison c in place: NaN * 0 would still be NaN
            getattr(layer.frozen["c"], part).fill_(float("nan"))
    ranges, singles = [], []
    run, one = FrozenBank.run, type(next(iter(layers.values())))._frozen_one
    monkeypatch.setattr(FrozenBank, "run", lambda self, s, e, *a: ranges.append((s, e)) or run(self, s, e, *a))
    monkeypatch.setattr(type(next(iter(layers.values()))), "_frozen_one",
                        lambda self, x, s: singles.append(s) or one(self, x, s))
    buffers = {n: (l.frozen.a.data_ptr(), l.frozen.b.data_ptr()) for n, l in layers.items()}
    with row_weights(model, IDS, W):
        got = model(ids).logits
        assert all(l.active_frozen_ids() == ("a", "b") for l in layers.values())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    c = 2
    if mode == "batched":
        assert ranges and all(not s <= c < e for s, e in ranges)
    else:
        assert singles and c not in singles
    # nothing was rebuilt: same buffers, one shared [B, S] weight tensor for every layer
    assert buffers == {n: (l.frozen.a.data_ptr(), l.frozen.b.data_ptr()) for n, l in layers.items()}
    with row_weights(model, ["a", "b"], W[:, :2]):  # stacks not listed get weight 0
        assert len({id(l._rows[0]) for l in layers.values()}) == 1
        assert torch.isfinite(model(ids).logits).all()


def test_row_weights_restore_dict_weights_and_refuse_misuse(tiny_llama):
    model, ids = _model_with_stacks(tiny_llama), _ids()
    set_stack_weights(model, {"b": 0.0})
    with torch.no_grad():
        before = model(ids).logits
        with row_weights(model, IDS, W):
            assert not torch.equal(model(ids).logits, before)
        assert torch.equal(model(ids).logits, before)
    with pytest.raises(ValueError, match="does not hold"):
        set_row_weights(model, ["a", "zzz"], W[:, :2])
    with pytest.raises(ValueError, match="batch"):
        set_row_weights(model, IDS, W[:, :3])
    with row_weights(model, IDS, W):
        with pytest.raises(ValueError, match="rows"):
            model(ids[:3])
        with pytest.raises(RuntimeError, match="row weights"):
            freeze_active_stack(model)
