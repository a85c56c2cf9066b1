"""Meta-router features: base-model-only hidden states of a prompt (paper 3.6).

What belongs here: turning prompts into the per-token features the meta-router
reads, a fixed mix of a middle layer's and the last layer's hidden states of the
BASE model (every stack off, row weights included, so the router routes on the
prompt's semantics and not on what stacks made of it), and the mean-pooled
features of the linear-probe baseline.

One max length (``RouterConfig.max_length``) serves training and inference: the
paper's reference code trained at 256 and served at 96, so the router saw
different pooling statistics at inference; here both call :func:`prompt_features`.

Prompts are tokenized as plain text (the tokenizer's own special tokens, no chat
template), right-padded, truncated to ``max_length`` tokens.

Sizes at Gemma-3-12B (H=3840, T=256): one prompt's features are 256 x 3840 fp32 =
3.9 MB (1.97 MB in bf16); a batch of 16 is 63 MB fp32. The base forward holds the
two selected layers only for the batch (``output_hidden_states`` keeps all 49
layers for that forward: 16 x 256 x 3840 x 49 x 2 B = 1.5 GB in bf16). The forward runs the decoder only
(:func:`decoder`), never the LM head, whose logits would be 16 x 256 x 262k x 2 B = 2.1 GB more.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import torch
from torch import nn

from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.stacks.inject import row_weights

log = logging.getLogger(__name__)


def num_layers(model: nn.Module) -> int:
    """Decoder layers of a Hugging Face causal LM (``text_config`` for multimodal ones)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.num_hidden_layers)


def feature_layers(model: nn.Module, cfg: RouterConfig) -> tuple[int, int]:
    """``(middle, last)`` indices into ``output_hidden_states`` (0 = embeddings, L = last layer)."""
    n = num_layers(model)
    mid = n // 2 if cfg.feature_layer is None else cfg.feature_layer
    if not 0 <= mid <= n:
        raise ValueError(f"feature_layer {mid} outside 0..{n}")
    return mid, n


def feature_dim(model: nn.Module) -> int:
    """Hidden width ``H`` of the features."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.hidden_size)


def decoder(model: nn.Module) -> nn.Module:
    """The model under the LM head (``LlamaModel`` of a ``LlamaForCausalLM``; ``Gemma3Model`` of Gemma-3).

    Its ``hidden_states`` are the causal LM's own (the last one after the final norm), so
    features are unchanged, but no logits are computed.
    """
    inner = getattr(model, "base_model", None)
    return inner if isinstance(inner, nn.Module) and inner is not model else model


def tokenize(tokenizer, prompts: Sequence[str], cfg: RouterConfig, device: torch.device | str = "cpu"):
    """``(input_ids [B, T], attention_mask [B, T])``, right-padded, ``T <= cfg.max_length``."""
    side = getattr(tokenizer, "padding_side", "right")
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, truncation=True,
                        max_length=cfg.max_length)
    finally:
        tokenizer.padding_side = side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def prompt_features(model: nn.Module, tokenizer, prompts: Sequence[str],
                    cfg: RouterConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Base-only features of one batch of prompts.

    Every stack (frozen and active) gets weight 0 for this forward through
    per-row weights over no stacks, so nothing but the base runs; the model's
    own stack weights (dict or per-row) are restored afterwards.

    Args:
        model: the base, with or without injected stacks.
        tokenizer: its tokenizer (needs a pad token).
        prompts: ``B`` prompt texts.
        cfg: ``max_length``, ``feature_layer``, ``feature_mix``.

    Returns:
        ``(features [B, T, H] fp32, mask [B, T] bool)``; padded positions are 0.
    """
    device = next(model.parameters()).device
    ids, att = tokenize(tokenizer, prompts, cfg, device)
    mid, last = feature_layers(model, cfg)
    was_training = model.training
    model.eval()
    try:
        with row_weights(model, [], torch.zeros(ids.shape[0], 0)):
            # the decoder without the LM head: no [B, T, vocab] logits (16 x 256 x 262k bf16 = 2.1 GB at Gemma-3)
            out = decoder(model)(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False)
    finally:
        model.train(was_training)
    hs = out.hidden_states
    feats = cfg.feature_mix * hs[mid].float() + (1.0 - cfg.feature_mix) * hs[last].float()  # (B, T, H)
    mask = att.bool()
    return feats * mask.unsqueeze(-1), mask


def iter_features(model: nn.Module, tokenizer, prompts: Sequence[str], cfg: RouterConfig,
                  batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`prompt_features` over ``prompts`` in batches of ``cfg.feature_batch_size``."""
    bs = batch_size or cfg.feature_batch_size
    for i in range(0, len(prompts), bs):
        yield prompt_features(model, tokenizer, prompts[i:i + bs], cfg)


def all_features(model: nn.Module, tokenizer, prompts: Sequence[str], cfg: RouterConfig,
                 dtype: torch.dtype = torch.float32, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every prompt, padded to one length, on the CPU (router training keeps them in memory).

    At Gemma-3-12B shapes in bf16 this is 1.97 MB per prompt (10k prompts: 19.7 GB
    host memory); pass ``dtype=torch.bfloat16`` there.

    Returns:
        ``(features [N, T, H], mask [N, T])`` with ``T`` the longest tokenized prompt (<= max_length).
    """
    from tqdm.auto import tqdm

    feats, masks = [], []
    bar = tqdm(total=len(prompts), desc="router features", unit="prompt", disable=not progress)
    for f, m in iter_features(model, tokenizer, list(prompts), cfg):
        feats.append(f.to("cpu", dtype))
        masks.append(m.cpu())
        bar.update(f.shape[0])
    bar.close()
    if not feats:
        raise ValueError("no prompts")
    t = max(f.shape[1] for f in feats)
    feats = [nn.functional.pad(f, (0, 0, 0, t - f.shape[1])) for f in feats]
    masks = [nn.functional.pad(m, (0, t - m.shape[1])) for m in masks]
    return torch.cat(feats), torch.cat(masks)


def mean_pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: ``[B, T, H] -> [B, H]`` (the linear probe's input)."""
    m = mask.unsqueeze(-1).to(features.dtype)
    return (features * m).sum(1) / m.sum(1).clamp_min(1.0)
