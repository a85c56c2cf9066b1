"""Per-row stack weights for one harness call: requests routed differently share a forward.

lm-eval's ``HFLM`` sorts and batches requests itself and hands the model only token
tensors (``_model_call(inps)`` for log-likelihoods, ``_model_generate(context, attention_mask=...)``
for generation). A :class:`RowPlan` knows, for every request of the call, the exact token row
HFLM will feed (HFLM's own encoding and truncation rules) and that request's stack weights, so
each batch's rows get their own weights through :func:`~brainstacks_core.stacks.inject.row_weights`
(``[B, S]``, one row per sequence). Routed evaluation then runs full ``batch_size`` batches
instead of one HFLM call per distinct weight vector (GSM8K: one request per forward).

Two cases would make a row's weights ambiguous; :func:`plan_loglikelihood` then returns None
and the caller keeps the grouped path (same scores, fewer rows per forward):

* two requests whose token rows are equal but whose weights differ (HFLM's one-token
  continuation cache computes equal rows once);
* two rows that differ only by trailing token-0s (HFLM right-pads with 0) with other weights.

Memory: one dict entry per request (its token tuple, at most ``max_length`` ints, and an
``S``-float weight row); at 10 stacks and 2,048 tokens ~16 KB per request, freed after the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch


@dataclass
class RowPlan:
    """Token row -> weight row, for one harness call.

    Attributes:
        stack_ids: the columns (every attached stack).
        by_row: exact (unpadded) token row -> ``[S]`` weights.
        right_padded: rows are right-padded with token 0 (log-likelihood) rather than
            given with an attention mask (generation).
    """

    stack_ids: list[str]
    by_row: dict[tuple[int, ...], torch.Tensor]
    right_padded: bool

    def weights(self, inps: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S]`` weights of a batch ``inps [B, T]`` (one host read of the batch's tokens).

        Raises:
            KeyError: a row that is not one of the call's requests (never guessed).
        """
        rows = inps.tolist()
        masks = attention_mask.bool().tolist() if attention_mask is not None else None
        out = []
        for b, row in enumerate(rows):
            if masks is not None:
                key = tuple(t for t, m in zip(row, masks[b]) if m)
                found = self.by_row.get(key)
            else:
                found, end = None, len(row)
                while end > 0 and row[end - 1] == 0:  # strip HFLM's zero padding
                    end -= 1
                while found is None and end <= len(row):  # a real trailing token 0 comes back one by one
                    found = self.by_row.get(tuple(row[:end]))
                    end += 1
            if found is None:
                raise KeyError(f"harness row {b} ({len(row)} tokens) is not a request of this call")
            out.append(found)
        return torch.stack(out)


def _vector(weights: Mapping[str, float], ids: Sequence[str]) -> torch.Tensor:
    return torch.tensor([float(weights.get(s, 0.0)) for s in ids], dtype=torch.float32)


def plan_loglikelihood(lm, requests: Sequence, weights: Sequence[Mapping[str, float]],
                       ids: Sequence[str]) -> RowPlan | None:
    """The rows HFLM's ``_loglikelihood_tokens`` feeds for ``requests`` (``Instance`` s), with their weights.

    Mirrors ``TemplateLM.loglikelihood`` (empty context -> ``prefix_token_id``) and HFLM's
    ``(context_enc + continuation_enc)[-(max_length + 1):][:-1]``.

    Returns:
        The plan, or None when a row's weights would be ambiguous (see the module doc).
    """
    by_row: dict[tuple[int, ...], torch.Tensor] = {}
    for req, w in zip(requests, weights):
        context, continuation = req.args
        if context == "":
            cont = lm.tok_encode(continuation, add_special_tokens=False)
            ctx, cont = (([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:]))
        else:
            ctx, cont = lm._encode_pair(context, continuation)
        row = tuple((list(ctx) + list(cont))[-(lm.max_length + 1):][:-1])
        vec = _vector(w, ids)
        if row in by_row and not torch.equal(by_row[row], vec):
            return None
        by_row[row] = vec
    for row, vec in by_row.items():  # a row that is another row plus trailing zeros
        end = len(row)
        while end > 0 and row[end - 1] == 0:
            end -= 1
            other = by_row.get(row[:end])
            if other is not None and not torch.equal(other, vec):
                return None
    return RowPlan(list(ids), by_row, right_padded=True)


def plan_generation(lm, requests: Sequence, weights: Sequence[Mapping[str, float]],
                    ids: Sequence[str]) -> RowPlan | None:
    """The context rows HFLM's ``generate_until`` feeds (left-truncated to ``max_length - max_gen_toks``)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    by_row: dict[tuple[int, ...], torch.Tensor] = {}
    for req, w in zip(requests, weights):
        context, gen_kwargs = req.args
        max_gen = normalize_gen_kwargs(dict(gen_kwargs), lm.max_gen_toks)["max_gen_toks"]
        enc, _ = lm.tok_batch_encode([context], left_truncate_len=lm.max_length - max_gen, truncation=lm.truncation)
        row = tuple(enc[0].tolist())
        vec = _vector(w, ids)
        if row in by_row and not torch.equal(by_row[row], vec):
            return None
        by_row[row] = vec
    return RowPlan(list(ids), by_row, right_padded=False)
