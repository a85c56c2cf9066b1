"""completion_loss: the LM head on completion positions only equals the full-logit reference."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_MODELS, VOCAB

from brainstacks_core.training.loss import batch_completion_nll


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _reference(model, batch) -> tuple[float, int]:
    """The naive loss: full [B, T, V] logits, shifted, masked cross-entropy."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                            labels.reshape(-1), ignore_index=-100, reduction="sum")
    return nll.item(), int((labels != -100).sum())


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
@pytest.mark.parametrize("chunk", [1, 4, 512])
def test_completion_positions_only_match_full_logits(name, chunk):
    model = TINY_MODELS[name](seed=0)
    if name == "gemma3":
        model.config.final_logit_softcapping = 5.0  # the softcap path must be applied too
    batch = _batch()
    with torch.no_grad():
        want, n_want = _reference(model, batch)
        got, n = batch_completion_nll(model, batch, chunk_tokens=chunk)
    assert n == n_want > 0
    assert abs(got.item() - want) <= 1e-5 * abs(want), (got.item(), want)


def test_no_full_logits_are_built(monkeypatch):
    model = TINY_MODELS["llama"](seed=0)
    seen = []
    model.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        _, n = batch_completion_nll(model, _batch(), chunk_tokens=4)
    assert all(len(s) == 2 and s[0] <= 4 for s in seen) and sum(s[0] for s in seen) == n  # [<=chunk, H] rows
