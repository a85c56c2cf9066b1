"""Tiny random Hugging Face causal LMs for injection tests (a plain module, not fixtures).

Each builder returns a seeded, randomly initialised model in eval mode with 2
decoder layers, hidden width 32 and the standard projection names
(``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``), built in memory:
nothing is downloaded. Use as ``from tiny_models import tiny_qwen2`` (pytest puts
``tests/`` on ``sys.path``).

Architecture quirks covered: Llama (GQA), Qwen2 (bias on q/k/v), Gemma3 text
(separate ``head_dim``, q/k norms, sliding + full attention layers, tied
embeddings) and Mistral (sliding window).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

VOCAB = 128
HIDDEN = 32
INTERMEDIATE = 72
LAYERS = 2
HEADS = 4
KV_HEADS = 2
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
)


def _seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Build under ``seed`` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.float().eval()


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """``LlamaForCausalLM``: 2 layers, hidden 32, 4 heads, 2 KV heads, vocab 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _seeded(lambda: LlamaForCausalLM(LlamaConfig(**_COMMON)), seed)


def tiny_qwen2(seed: int = 0) -> torch.nn.Module:
    """``Qwen2ForCausalLM``: as :func:`tiny_llama`, with bias on q/k/v projections."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _seeded(lambda: Qwen2ForCausalLM(Qwen2Config(**_COMMON)), seed)


def tiny_gemma3(seed: int = 0) -> torch.nn.Module:
    """Text-only ``Gemma3ForCausalLM``: head_dim 16 (q_proj is 32 -> 64), sliding + full layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        **_COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    )
    return _seeded(lambda: Gemma3ForCausalLM(config), seed)


def tiny_mistral(seed: int = 0) -> torch.nn.Module:
    """``MistralForCausalLM``: as :func:`tiny_llama`, with a 16-token sliding window."""
    from transformers import MistralConfig, MistralForCausalLM

    return _seeded(lambda: MistralForCausalLM(MistralConfig(**_COMMON, sliding_window=16)), seed)


TINY_MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "gemma3": tiny_gemma3,
    "mistral": tiny_mistral,
}
