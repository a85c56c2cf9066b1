"""Null-space bases: the top-K subspace against a full-SVD reference, and refusal of bad deltas."""

from __future__ import annotations

import pytest
import torch

from brainstacks_core.stacks.null_space import NullSpaceConfig, load_bases, save_bases, top_directions


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
