"""Meta-router cost per prompt vs one base forward of the same prompt (issue 10 target: <= 5%).

1. Measured, in-process, on the demo base's shapes (tiny Llama: hidden 64, 2 layers,
   vocab 1024; prompts of ``max_length`` tokens): the router network alone on
   precomputed features vs the base forward that makes them, for router widths
   512 (the paper's) and 64. The feature forward itself IS a base forward (stacks
   off), so "router overhead" is the network only.
2. Analytical, at Gemma-3-12B shapes (H=3840, 48 layers, ~11.8B non-embedding
   parameters, T=256): router FLOPs vs base forward FLOPs (2 x params x tokens).

Run: .venv/bin/python benchmarks/bench_router.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from brainstacks_core.routing.config import RouterConfig  # noqa: E402
from brainstacks_core.routing.router import MetaRouter  # noqa: E402


def _time(fn, reps: int = 20) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def router_flops(h: int, t: int, d: int, w: int) -> float:
    """Multiply-adds x 2 of one prompt through :class:`MetaRouter` (projection, 2 attentions, fusion, heads)."""
    proj = t * h * w
    attn = lambda q: 2 * t * w * w + 2 * q * w * w + 2 * q * t * w  # k/v proj, q/out proj, scores+mix  # noqa: E731
    fusion = d * (2 * w * w + w * w)
    return 2.0 * (proj + attn(1) + attn(d) + fusion + d * w)


@torch.no_grad()
def router_vs_base(base, feature_dim: int, d: int, b: int, t: int, vocab: int,
                   widths=((512, 8), (64, 4))) -> tuple[float, list[dict]]:
    """Seconds per batch of ``base``'s feature forward, and per router width the network's seconds on its features.

    Returns:
        ``(base_seconds, [{"width", "params", "seconds"}, ...])`` for a batch of ``b`` prompts of ``t`` tokens.
    """
    ids = torch.randint(0, vocab, (b, t))
    t_base = _time(lambda: base(input_ids=ids, output_hidden_states=True, use_cache=False))
    feats, mask = torch.randn(b, t, feature_dim), torch.ones(b, t, dtype=torch.bool)
    rows = []
    for w, heads in widths:
        net = MetaRouter(feature_dim, d, RouterConfig(hidden=w, heads=heads)).eval()
        rows.append({"width": w, "params": sum(p.numel() for p in net.parameters()),
                     "seconds": _time(lambda: net(feats, mask))})
    return t_base, rows


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    t, d, b = 256, 5, 16
    base = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512)).eval()
    t_base, rows = router_vs_base(base, 64, d, b, t, 1024)
    print(f"demo shapes (B={b}, T={t}, H=64, D={d}): base forward {1e3 * t_base / b:.3f} ms/prompt")
    for r in rows:
        print(f"  router width {r['width']:3d} ({r['params'] / 1e6:.2f}M params): {1e3 * r['seconds'] / b:.3f} "
              f"ms/prompt = {100 * r['seconds'] / t_base:.1f}% of a base forward")
    gemma = router_flops(3840, 256, 10, 512)
    base_f = 2.0 * 11.8e9 * 256
    print(f"Gemma-3-12B shapes (T=256, D=10, width 512): router {gemma / 1e9:.2f} GFLOP vs base "
          f"{base_f / 1e12:.2f} TFLOP per prompt = {100 * gemma / base_f:.3f}%")


if __name__ == "__main__":
    main()
