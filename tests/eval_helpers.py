"""Tiny models with two frozen random stacks for the evaluation tests (a plain module, not fixtures)."""

from __future__ import annotations

import copy

import torch

from brainstacks_core.base.config import TinyBaseConfig
from brainstacks_core.base.tiny_base import build_tiny_llama, train_tokenizer
from brainstacks_core.stacks.config import MoELoRAConfig
from brainstacks_core.stacks.inject import active_parameters, add_active_stack, freeze_active_stack, inject_stacks

TEXTS = [f"Question: the patient {i} has {i % 7} symptoms and {i * 3} apples. Answer: {i % 11}" for i in range(300)]
MOE = MoELoRAConfig(num_experts=2, rank=4, alpha=8.0, top_k=1)


def tiny_base(seed: int = 0):
    """(model, tokenizer): a random tiny Llama (hidden 32, 2 layers, vocab 320) and its BPE tokenizer."""
    tok = train_tokenizer(TEXTS, 320)
    cfg = TinyBaseConfig(vocab_size=320, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, seed=seed)
    torch.manual_seed(seed)
    return build_tiny_llama(cfg, tok).float().eval(), tok


def add_random_stack(model, stack_id: str, seed: int, scale: float = 0.5) -> None:
    """A frozen stack with random (non-zero) A, B and router, so it changes the outputs."""
    add_active_stack(model, stack_id, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in active_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    freeze_active_stack(model)


def stacked(seed: int = 0):
    """(plain base copy, model with stacks math-r1 and medical-r1, tokenizer)."""
    base, tok = tiny_base(seed)
    plain = copy.deepcopy(base)
    inject_stacks(base, MOE)
    add_random_stack(base, "math-r1", 11)
    add_random_stack(base, "medical-r1", 12)
    return plain, base, tok


VERSIONS = {"math-r1": "v-math-1", "medical-r1": "v-med-1"}
DOMAINS = {"math": ["math-r1"], "medical": ["medical-r1"]}
