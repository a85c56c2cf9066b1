"""Null-space bases: top-K against a full-SVD reference, K per earlier domain, bounded sampling, bad deltas."""

from __future__ import annotations

import pytest
import torch

from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, inject_stacks, stacked_layers
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.null_space import (
    DeltaReservoir,
    NullSpaceConfig,
    collect_frozen_deltas,
    compute_bases,
    load_bases,
    save_bases,
    top_directions,
)


def _low_rank(n, out, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.linspace(10.0, 1.0, rank)
    return (torch.randn(n, rank, generator=g) * spectrum) @ torch.linalg.qr(torch.randn(out, rank, generator=g))[0].T


@pytest.mark.parametrize("n,out,k,full_below", [(300, 48, 6, 512), (2000, 700, 8, 64)])
def test_top_directions_span_the_reference_subspace(n, out, k, full_below):
    d = _low_rank(n, out, rank=12) + 1e-3 * torch.randn(n, out, generator=torch.Generator().manual_seed(1))
    v = top_directions(d, NullSpaceConfig(k=k, full_svd_below=full_below, niter=6))
    assert v.shape == (k, out)
    torch.testing.assert_close(v @ v.T, torch.eye(k), atol=1e-4, rtol=0)  # orthonormal rows
    _, _, vh = torch.linalg.svd(d, full_matrices=False)  # naive reference: full SVD
    ref = vh[:k]
    torch.testing.assert_close(v.T @ v, ref.T @ ref, atol=2e-3, rtol=0)  # same projector (randomized path too)
    projected = d - (d @ v.T) @ v
    assert (projected @ ref.T).abs().max() < 1e-2 * d.abs().max()


def test_negligible_directions_are_dropped_and_zero_deltas_claim_nothing():
    d = _low_rank(200, 32, rank=3)
    assert top_directions(d, NullSpaceConfig(k=8)).shape[0] == 3
    assert top_directions(torch.zeros(50, 32), NullSpaceConfig(k=8)).shape == (0, 32)


def test_non_finite_deltas_are_refused():
    d = _low_rank(50, 16, rank=2)
    d[3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        top_directions(d, NullSpaceConfig(k=4))


def test_bases_round_trip_and_corruption(tmp_path):
    bases = {"a": top_directions(_low_rank(100, 16, 4), NullSpaceConfig(k=4)), "b": torch.zeros(0, 16)}
    path = tmp_path / "ns.safetensors"
    save_bases(path, bases, {"domain": "x"})
    loaded = load_bases(path)
    assert torch.equal(loaded["a"], bases["a"]) and loaded["b"].shape == (0, 16)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_bases(path)


def test_randomized_svd_is_seeded_and_leaves_the_global_rng_alone():
    d = _low_rank(600, 80, rank=10) + 1e-2 * torch.randn(600, 80, generator=torch.Generator().manual_seed(3))
    cfg = NullSpaceConfig(k=6, full_svd_below=8, niter=1)
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    a = top_directions(d, cfg, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(2)
    assert torch.equal(top_directions(d, cfg, seed=5), a)


def test_reservoir_keeps_a_bounded_uniform_sample():
    pool = DeltaReservoir(50, torch.Generator().manual_seed(0))
    hits = torch.zeros(2000)
    for trial in range(40):
        pool = DeltaReservoir(50, torch.Generator().manual_seed(trial))
        for start in range(0, 2000, 37):  # batches of 37 rows: the row index is the value
            rows = torch.arange(start, min(start + 37, 2000), dtype=torch.float32)[:, None].repeat(1, 3)
            pool.add(rows)
            assert pool.rows.shape[0] <= 50
        assert pool.seen == 2000 and pool.rows.shape == (50, 3)
        assert len(set(pool.rows[:, 0].tolist())) == 50  # without replacement
        hits[pool.rows[:, 0].long()] += 1
    first, second = hits[:1000].sum(), hits[1000:].sum()  # early and late rows alike
    assert abs(first - second) < 0.15 * (first + second), (first, second)


def _model_with_domains(domains: int = 2, stacks_per_domain: int = 1):
    from conftest import build_tiny_llama

    model = build_tiny_llama(hidden=32, layers=1)
    inject_stacks(model, MoELoRAConfig(num_experts=2, rank=2, alpha=4, top_k=1))
    ids = []
    for d in range(domains):
        mine = []
        for s in range(stacks_per_domain):
            sid = f"d{d}-r{s}"
            add_active_stack(model, sid, seed=10 * d + s)
            g = torch.Generator().manual_seed(100 + 10 * d + s)
            for layer in stacked_layers(model).values():
                with torch.no_grad():
                    layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g))
            freeze_active_stack(model)
            mine.append(sid)
        ids.append(mine)
    return model, ids


def _batches(n_batches: int, seed: int = 0, b: int = 4, t: int = 12):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, 96, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        for j, n in enumerate(torch.randint(3, t + 1, (b,), generator=g).tolist()):
            mask[j, n:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _naive_deltas(model, batches):
    """Every real (non-padding) position's frozen delta per layer, on the host."""
    rows = {n: [] for n in stacked_layers(model)}
    handles = [layer.register_forward_hook(
        lambda m, i, o, n=n: rows[n].append(m._frozen_delta(i[0].reshape(-1, m.in_features), m.active_frozen_ids())))
        for n, layer in stacked_layers(model).items()]
    with torch.no_grad():
        keep = []
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            keep.append(b["attention_mask"].reshape(-1).bool())
    for h in handles:
        h.remove()
    mask = torch.cat(keep)
    return {n: torch.cat(r)[mask] for n, r in rows.items()}


def test_collection_masks_padding_and_keeps_every_real_row_when_it_fits():
    model, _ = _model_with_domains(1)
    batches = _batches(3)
    ref = _naive_deltas(model, batches)
    got = collect_frozen_deltas(model, batches, max_rows=10_000)
    for name, d in ref.items():
        assert got[name].shape == d.shape  # padding rows are not there
        key = lambda x: x[torch.argsort(x[:, 0])]  # noqa: E731 - compare as a set of rows
        torch.testing.assert_close(key(got[name]), key(d), rtol=0, atol=1e-6)


def test_collection_buffer_stays_bounded_with_many_validation_rows(monkeypatch):
    model, _ = _model_with_domains(1)
    peak, original = [0], DeltaReservoir.add

    def add(self, d):
        original(self, d)
        peak[0] = max(peak[0], self.rows.shape[0])

    monkeypatch.setattr(DeltaReservoir, "add", add)
    batches = _batches(60, seed=1)  # ~2,000 real positions per layer
    ref = _naive_deltas(model, batches)
    got = collect_frozen_deltas(model, batches, max_rows=64, seed=0)
    assert peak[0] == 64
    for name, d in got.items():
        assert d.shape == (64, ref[name].shape[1]) and ref[name].shape[0] > 1500
        dist = torch.cdist(d, ref[name], compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values  # every sampled row is a real position's delta
        assert dist.max() < 1e-5 * ref[name].abs().max()
    again = collect_frozen_deltas(model, batches, max_rows=64, seed=0)
    assert all(torch.equal(again[n], got[n]) for n in got)  # seeded


def test_k_directions_per_earlier_domain_merged_and_capped():
    model, ids = _model_with_domains(2)
    cfg = NullSpaceConfig(k=2)
    groups = [(ids[0], _batches(4, seed=2)), (ids[1], _batches(4, seed=3))]
    bases = compute_bases(model, groups, cfg)
    for name, v in bases.items():
        out = v.shape[1]
        assert v.shape[0] == 4, name  # 2 per domain, not 2 shared by both
        torch.testing.assert_close(v @ v.T, torch.eye(4), atol=1e-5, rtol=0)
        for (sids, batches) in groups:  # each domain's own top-2 lies in the union
            from brainstacks_core.stacks.inject import only_stacks

            with only_stacks(model, sids):
                own = top_directions(collect_frozen_deltas(model, batches, 10_000)[name], cfg)
            assert (own - (own @ v.T) @ v).abs().max() < 1e-4
        assert out >= 4
    wide = compute_bases(model, [(ids[0], _batches(4, seed=2)), (ids[1], _batches(4, seed=3))],
                         NullSpaceConfig(k=10_000))
    for name, v in wide.items():
        assert v.shape[0] <= v.shape[1]  # capped by the output width
