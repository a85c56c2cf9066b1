"""Validation loss on completion tokens, the number every training decision uses.

The loss is the mean negative log-likelihood over all response tokens of the set
(summed over batches, divided by the token count), so it does not depend on the
batch size and is bit-reproducible for a fixed model and data.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss


@torch.no_grad()
def completion_loss(model: nn.Module, tokenizer, df: pd.DataFrame, max_length: int = 256,
                    batch_size: int = 16) -> float:
    """Token-mean NLL of the responses in ``df`` under ``model`` (eval mode, no noise).

    Args:
        model: a causal LM (stacks as currently weighted).
        tokenizer: its tokenizer (with chat template).
        df: rows with prompt/response/system.
        max_length: truncation length in tokens.
        batch_size: rows per forward pass.

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
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
            nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                              ignore_index=-100, reduction="sum")
            total += nll.item()
            count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return total / count if count else float("nan")
