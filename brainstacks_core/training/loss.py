"""Validation loss on completion tokens, the number every training decision uses.

The loss is the mean negative log-likelihood over all response tokens of the set
(summed over batches, divided by the token count), so it does not depend on the
batch size and is bit-reproducible for a fixed model and data. The round's starting
loss, every in-training evaluation (``StackSFTTrainer(eval_loss=...)``, which
BestStackCallback reads), the keep decision and the forgetting matrix all call
:func:`completion_loss`.

Memory: the LM head runs on the completion positions only, ``chunk_tokens`` rows at
a time, so no ``[batch, seq, vocab]`` logits tensor exists. At Gemma-3-12B shapes
(vocab 262,144) one chunk of 512 positions is 512 x 262,144 x 4 B = 537 MB of fp32
logits (plus 268 MB for the bf16 head output), whatever the batch size and length;
full logits for a batch of 16 x 1024 tokens would be 17.2 GB in fp32 (+ 8.6 GB bf16).
The decoder's hidden states ``[B, T, 3840]`` in bf16 are 126 MB for that batch.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss


def _split_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(decoder, lm_head)`` of a causal LM (a PEFT wrapper is looked through), or None.

    The decoder is ``model.<base_model_prefix>`` (``model.model`` for Llama, Gemma-3
    text and multimodal, Qwen2, Mistral); it returns ``last_hidden_state`` ``[B, T, H]``.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    body = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if head is None or body is None or body is inner:
        return None
    return body, head


def _finish_logits(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Apply what the model's own forward applies after its head (Gemma softcapping, Granite scaling)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    scaling = getattr(cfg, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def batch_completion_nll(model: nn.Module, batch: dict[str, torch.Tensor],
                         chunk_tokens: int = 512) -> tuple[torch.Tensor, int]:
    """Summed NLL of the labelled (completion) next-token positions of one batch.

    Args:
        model: a causal LM.
        batch: ``input_ids``, ``attention_mask``, ``labels`` each ``[B, T]`` (labels -100
            where not trained).
        chunk_tokens: completion positions sent through the LM head at once.

    Returns:
        ``(sum of NLL in fp32, number of positions)``.
    """
    labels = batch["labels"][:, 1:]  # [B, T-1]
    keep = labels != -100
    n = int(keep.sum())
    parts = _split_head(model)
    if parts is None:  # an unknown architecture: the model's own (full-logit) forward
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll = nn.functional.cross_entropy(logits[:, :-1][keep].float(), labels[keep], reduction="sum")
        return nll, n
    body, head = parts
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    h = hidden[:, :-1][keep]  # [N, H]: the positions that predict a completion token
    y = labels[keep]  # [N]
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for i in range(0, n, chunk_tokens):
        logits = _finish_logits(model, head(h[i:i + chunk_tokens])).float()  # [<=chunk, V]
        total = total + nn.functional.cross_entropy(logits, y[i:i + chunk_tokens], reduction="sum")
    return total, n


def per_row_completion_nll(model: nn.Module, batch: dict[str, torch.Tensor],
                           chunk_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and count of the labelled positions of EACH row of one batch.

    Same computation as :func:`batch_completion_nll` (hidden states through the head
    in chunks of ``chunk_tokens`` positions, so logits never exceed ``[chunk, V]``:
    512 x 262k x 4 B = 537 MB at Gemma-3 vocabulary), accumulated per row.

    Returns:
        ``(nll [B] fp32, count [B] int64)``.
    """
    labels = batch["labels"][:, 1:]  # [B, T-1]
    keep = labels != -100
    rows = keep.nonzero()[:, 0]  # [N]: the row of each labelled position
    b = labels.shape[0]
    counts = keep.sum(dim=1)
    parts = _split_head(model)
    if parts is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        tok = nn.functional.cross_entropy(logits[:, :-1][keep].float(), labels[keep], reduction="none")
        return torch.zeros(b, dtype=torch.float32, device=tok.device).index_add_(0, rows, tok), counts
    body, head = parts
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    h = hidden[:, :-1][keep]  # [N, H]
    y = labels[keep]  # [N]
    total = torch.zeros(b, dtype=torch.float32, device=h.device)
    for i in range(0, len(y), chunk_tokens):
        logits = _finish_logits(model, head(h[i:i + chunk_tokens])).float()  # [<=chunk, V]
        tok = nn.functional.cross_entropy(logits, y[i:i + chunk_tokens], reduction="none")
        total.index_add_(0, rows[i:i + chunk_tokens], tok)
    return total, counts


@torch.no_grad()
def completion_loss(model: nn.Module, tokenizer, df: pd.DataFrame, max_length: int = 256,
                    batch_size: int = 16, chunk_tokens: int = 512) -> float:
    """Token-mean NLL of the responses in ``df`` under ``model`` (eval mode, no noise).

    Args:
        model: a causal LM (stacks as currently weighted).
        tokenizer: its tokenizer (with chat template).
        df: rows with prompt/response/system.
        max_length: truncation length in tokens.
        batch_size: rows per forward pass.
        chunk_tokens: completion positions per LM-head call (bounds the logits memory).

    Returns:
        The loss as a Python float (NaN if there is no response token).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    try:
        for batch in iter_batches(tokenize_for_loss(tokenizer, df, max_length), batch_size, pad, device):
            nll, n = batch_completion_nll(model, batch, chunk_tokens)
            total += nll.item()
            count += n
    finally:
        model.train(was_training)
    return total / count if count else float("nan")
