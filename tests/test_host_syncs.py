"""No host sync in a wrapped projection's training forward or backward (issue: ``logits[keep]`` forced one).

On CUDA, an op whose output shape depends on data (boolean indexing, ``nonzero``, ``masked_select``) or a
read of a value (``.item()``, ``.tolist()``: ``aten._local_scalar_dense``) waits for the device. The test
counts those ops with a ``TorchDispatchMode`` on CPU, so it needs no GPU and sees exactly what CUDA would
sync on (``torch.cuda.set_sync_debug_mode`` reports the same calls on a GPU worker: benchmarks/gpu_check.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from brainstacks_core.stacks.config import MoELoRAConfig
from brainstacks_core.stacks.moe_lora import MoELoRADelta, load_balance_loss

# The one counter, shared with the GPU check (benchmarks/gpu_probes.py), so both count the same ops.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_probes import CpuSyncCounter as SyncCounter  # noqa: E402


def test_counter_sees_boolean_indexing_and_item():
    x, keep = torch.randn(6, 3), torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    with SyncCounter() as c:
        x[keep].sum().item()
    assert c.sites, "the counter must see what it is there to catch"


def test_masked_training_forward_and_backward_do_not_sync():
    torch.manual_seed(0)
    m = MoELoRADelta(32, 24, MoELoRAConfig(num_experts=4, rank=4, alpha=8)).train()
    torch.nn.init.normal_(m.lora_B, std=0.02)
    x = torch.randn(40, 32, requires_grad=True)
    m.token_mask = (torch.arange(40) % 5 != 0)  # padding at every fifth position
    with SyncCounter() as c:
        out = m(x)
        loss = out.pow(2).mean() + 0.01 * m.last_aux_loss
        loss.backward()
    assert c.sites == [], f"host syncs in the MoE-LoRA forward/backward: {c.sites}"
    assert m.router.weight.grad.abs().sum() > 0


def test_masked_mean_equals_the_loss_on_the_real_rows_only():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 4, generator=g)
    idx = logits.topk(2, dim=-1).indices
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    torch.testing.assert_close(load_balance_loss(logits, idx, 4, mask),
                               load_balance_loss(logits[mask], idx[mask], 4))
    zero = load_balance_loss(logits, idx, 4, torch.zeros(12, dtype=torch.bool))
    assert zero.item() == 0.0
