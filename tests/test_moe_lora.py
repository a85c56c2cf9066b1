"""MoELoRADelta against a naive per-expert loop, and its invariants."""

from __future__ import annotations

import math

import pytest
import torch

from brainstacks_core.stacks.moe_lora import MoELoRAConfig, MoELoRADelta, load_balance_loss, project_out, top_k_gates


def naive_delta(m: MoELoRADelta, x: torch.Tensor, noise: torch.Tensor | None, basis: torch.Tensor | None):
    """Textbook MoE-LoRA: loop over tokens' top-k experts, then project each output."""
    cfg = m.config
    logits = x @ m.router.weight.T
    if noise is not None:
        logits = logits + torch.nn.functional.softplus(x @ m.noise_linear.weight.T) * noise
    out = torch.zeros(x.shape[0], m.out_features)
    for t in range(x.shape[0]):
        vals, idx = torch.topk(logits[t], cfg.top_k)
        probs = torch.softmax(vals, dim=0)
        row = torch.zeros(m.out_features)
        for p, e in zip(probs, idx):
            row = row + p * (x[t] @ m.lora_A[e].T @ m.lora_B[e]) * (cfg.alpha / math.sqrt(cfg.rank))
        if basis is not None:
            row = row - basis.T @ (basis @ row)
        out[t] = row
    return out


def _trained_like(m: MoELoRADelta, seed: int = 0) -> MoELoRADelta:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)
        m.noise_linear.weight.copy_(torch.randn(m.noise_linear.weight.shape, generator=g) * 0.1)
    return m


def _basis(k: int, out: int, seed: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(out, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()  # (k, out) orthonormal rows


@pytest.mark.parametrize("use_basis", [False, True])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_vectorised_matches_naive_loop_outputs_and_grads(use_basis, top_k):
    torch.manual_seed(0)
    cfg = MoELoRAConfig(num_experts=4, rank=8, alpha=16, top_k=top_k)
    m = _trained_like(MoELoRADelta(24, 20, cfg)).eval()
    x = torch.randn(13, 24)
    basis = _basis(5, 20) if use_basis else None
    ref = _trained_like(MoELoRADelta(24, 20, cfg)).eval()
    ref.load_state_dict(m.state_dict())

    y = m(x, basis)
    y_ref = naive_delta(ref, x, None, basis)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)

    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    for name, p in m.named_parameters():
        p_ref = dict(ref.named_parameters())[name]
        if p.grad is None:
            assert p_ref.grad is None or torch.count_nonzero(p_ref.grad) == 0, name
            continue
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)  # grads ~10: fused matmul rounding


def test_training_noise_matches_naive_with_same_noise_draw():
    cfg = MoELoRAConfig(num_experts=4, rank=4)
    m = _trained_like(MoELoRADelta(16, 12, cfg)).train()
    x = torch.randn(9, 16)
    torch.manual_seed(123)
    y = m(x)
    torch.manual_seed(123)
    noise = torch.randn(9, 4)
    torch.testing.assert_close(y, naive_delta(m, x, noise, None), rtol=1e-5, atol=1e-6)


def test_zero_init_is_exact_noop_and_init_shapes():
    cfg = MoELoRAConfig()
    m = MoELoRADelta(32, 48, cfg).train()
    y = m(torch.randn(7, 32))
    assert torch.equal(y, torch.zeros(7, 48))
    assert m.lora_A.shape == (4, 16, 32) and m.lora_B.shape == (4, 16, 48)
    assert torch.count_nonzero(m.noise_linear.weight) == 0
    assert cfg.scale == pytest.approx(4.0)
    assert 0.01 < m.router.weight.std().item() < 0.03


def test_top_k_gates_exactly_k_nonzero_summing_to_one():
    logits = torch.randn(100, 6)
    for k in (1, 2, 4):
        gates, idx = top_k_gates(logits, k)
        assert torch.all((gates > 0).sum(-1) == k)
        torch.testing.assert_close(gates.sum(-1), torch.ones(100))
        assert torch.equal(torch.sort(idx, -1).values, torch.sort(logits.topk(k).indices, -1).values)


def test_eval_is_deterministic_and_training_is_noisy():
    m = _trained_like(MoELoRADelta(16, 16, MoELoRAConfig(rank=4)))
    x = torch.randn(32, 16)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


def test_aux_loss_has_gradient_on_router():
    m = _trained_like(MoELoRADelta(16, 16, MoELoRAConfig(rank=4))).train()
    m(torch.randn(64, 16))
    assert m.last_aux_loss is not None and m.last_aux_loss.requires_grad
    m.last_aux_loss.backward()
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0


def test_load_balance_loss_is_k_when_balanced_and_larger_when_collapsed():
    logits = torch.zeros(8, 4)
    idx = torch.tensor([[0, 1], [2, 3]] * 4)
    assert load_balance_loss(logits, idx, 4).item() == pytest.approx(2.0)  # sum_e f(e) = k = 2
    collapsed = torch.tensor([[10.0, 9.0, 0.0, 0.0]]).repeat(8, 1)
    assert load_balance_loss(collapsed, collapsed.topk(2).indices, 4).item() > 3.8


def test_load_balance_loss_matches_the_papers_formula_by_hand():
    """Paper eq. 7: L = N * sum_e P(e) * f(e), P = mean router probability, f = fraction of tokens sent to e."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.0], [1.0, 1.5, 2.0, 0.5]])
    idx = logits.topk(2, dim=-1).indices  # tokens -> {0,1}, {1,2}, {2,1}
    n_tokens, n_experts = 3, 4
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    p = [sum(probs[t][e] for t in range(n_tokens)) / n_tokens for e in range(n_experts)]
    f = [sum(e in row for row in idx.tolist()) / n_tokens for e in range(n_experts)]  # [1/3, 3/3, 2/3, 0]
    assert f == pytest.approx([1 / 3, 1.0, 2 / 3, 0.0])
    want = n_experts * sum(p[e] * f[e] for e in range(n_experts))
    assert load_balance_loss(logits, idx, n_experts).item() == pytest.approx(want, rel=1e-6)
    mask = torch.tensor([1, 1, 0])  # the third token is padding: the formula over the first two only
    p2 = [(probs[0][e] + probs[1][e]) / 2 for e in range(n_experts)]
    f2 = [0.5, 1.0, 0.5, 0.0]
    assert load_balance_loss(logits, idx, n_experts, mask).item() == pytest.approx(
        n_experts * sum(a * b for a, b in zip(p2, f2)), rel=1e-6)


def test_projection_idempotent_and_orthogonal():
    basis = _basis(6, 40)
    d = torch.randn(50, 40)
    p = project_out(d, basis)
    torch.testing.assert_close(project_out(p, basis), p, atol=1e-5, rtol=1e-5)
    assert (p @ basis.T).abs().max() < 1e-5
    # the projected delta of a stack equals projecting its outputs
    m = _trained_like(MoELoRADelta(16, 40, MoELoRAConfig(rank=4))).eval()
    x = torch.randn(11, 16)
    torch.testing.assert_close(m(x, basis), project_out(m(x), basis), atol=1e-5, rtol=1e-5)
    assert (m(x, basis) @ basis.T).abs().max() < 1e-5


def test_config_validation():
    with pytest.raises(ValueError, match="top_k"):
        MoELoRAConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        MoELoRAConfig.from_dict({"experts": 4})
    assert MoELoRAConfig.from_dict(MoELoRAConfig().to_dict()) == MoELoRAConfig()
