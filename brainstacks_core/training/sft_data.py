"""SFT rows (prompt/response/system) to chat messages, trl datasets and loss batches.

One conversion for everything that reads training data: trl's SFTTrainer (as a
conversational prompt-completion dataset, so only the response is trained), the
validation-loss evaluator, the null-space collector and the forgetting matrix.
"""

from __future__ import annotations

from typing import Iterator

import pandas as pd
import torch


def to_messages(row: dict | pd.Series) -> tuple[list[dict], list[dict]]:
    """Split one row into (prompt messages, completion messages)."""
    prompt = []
    system = row.get("system") if hasattr(row, "get") else None
    if isinstance(system, str) and system.strip():
        prompt.append({"role": "system", "content": system})
    prompt.append({"role": "user", "content": str(row["prompt"])})
    return prompt, [{"role": "assistant", "content": str(row["response"])}]


def to_sft_dataset(df: pd.DataFrame):
    """A ``datasets.Dataset`` in trl's conversational prompt-completion format."""
    from datasets import Dataset

    pairs = [to_messages(r) for r in df.to_dict("records")]
    return Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})


def tokenize_for_loss(tokenizer, df: pd.DataFrame, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (prompt positions masked with -100) for each row.

    Args:
        tokenizer: a tokenizer with a chat template.
        df: rows with prompt, response (and optional system).
        max_length: truncation length in tokens.

    Returns:
        One ``(input_ids, labels)`` pair per row, both of length <= max_length.
    """
    out = []
    for row in df.to_dict("records"):
        prompt, completion = to_messages(row)
        p_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        f_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(f_text, add_special_tokens=False)["input_ids"][:max_length]
        n_prompt = min(len(p_ids), len(f_ids))
        out.append((f_ids, [-100] * n_prompt + f_ids[n_prompt:]))
    return out


def iter_batches(examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                 device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """Right-padded batches: ``input_ids``, ``attention_mask``, ``labels`` each ``[B, T]``."""
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        t = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), t), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), t), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), t), dtype=torch.long)
        for j, (x, y) in enumerate(chunk):
            ids[j, :len(x)] = torch.tensor(x)
            labels[j, :len(y)] = torch.tensor(y)
            mask[j, :len(x)] = 1
        yield {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
