"""Answer loss of (prompt, answer) pairs under many stack combinations, many per forward pass.

What belongs here: the per-row loss machinery shared by the oracle (0/1 domain
combinations, cached in the catalog) and routed evaluation (continuous router
weights, not cached). Rows of one forward may use different stacks: each row gets
its own weights through :func:`~brainstacks_core.stacks.inject.row_weights`
(``[B, S]`` fp32, 4 B x 16 rows x 10 stacks = 640 B per forward), and a stack no row
uses is skipped, never multiplied by zero.

Loss = mean token NLL over the answer tokens (the prompt is masked), truncated to
``max_length`` tokens, the same tokenization as training's validation loss.
Rows that repeat one pair under different combinations are batched together, so
they share a length and waste no padding.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from brainstacks_core.lineage.versioning import content_hash
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.stacks.inject import row_weights
from brainstacks_core.training.loss import per_row_completion_nll
from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss

log = logging.getLogger(__name__)
_LOSS_MODULES = ("routing/pair_loss.py", "training/loss.py", "training/sft_data.py", "stacks/stacked_layer.py",
                 "stacks/moe_lora.py", "stacks/frozen_bank.py")


def combo_name(combo: Sequence[str], domains: Sequence[str]) -> str:
    """Canonical name of a combination: its domains in curriculum order joined by ``+``; ``base`` if empty."""
    order = [d for d in domains if d in set(combo)]
    return "+".join(order) if order else "base"


def loss_code_version() -> str:
    """Hash of the modules that decide a pair's loss (a change there invalidates cached oracle rows)."""
    root = Path(__file__).resolve().parents[1]
    return content_hash(*[(m, hashlib.sha256((root / m).read_bytes()).hexdigest()) for m in _LOSS_MODULES],
                        length=12)


def _as_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={"answer": "response"}) if "response" not in df and "answer" in df else df


def answerable(tokenizer, df: pd.DataFrame, max_length: int) -> list[bool]:
    """Per row: does any answer token survive truncation to ``max_length``? (Others have no loss.)"""
    return [any(t != -100 for t in labels) for _, labels in tokenize_for_loss(tokenizer, _as_rows(df), max_length)]


@torch.no_grad()
def weighted_row_losses(model, tokenizer, examples: list[tuple[list[int], list[int]]], stack_ids: Sequence[str],
                        weights: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """Mean answer NLL of each example under its own row of stack weights.

    Args:
        examples: ``(input_ids, labels)`` per row (:func:`tokenize_for_loss`).
        stack_ids: the ``S`` stacks the weight columns refer to.
        weights: ``[N, S]``, row ``n`` for example ``n``.
        batch_size: rows per forward pass.

    Returns:
        ``(losses [N] fp32 (NaN where a row has no answer token), forward passes run)``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out, forwards = [], 0
    try:
        for start, batch in zip(range(0, len(examples), batch_size),
                                iter_batches(examples, batch_size, pad, device)):
            w = weights[start:start + batch["input_ids"].shape[0]]
            with row_weights(model, list(stack_ids), w):
                nll, n = per_row_completion_nll(model, batch)
            forwards += 1
            out.append((nll / n.clamp(min=1)).where(n > 0, torch.full_like(nll, float("nan"))).cpu())
    finally:
        model.train(was_training)
    return (torch.cat(out) if out else torch.zeros(0)), forwards


def routed_losses(model, tokenizer, rows: pd.DataFrame, domain_stacks: Mapping[str, Sequence[str]],
                  domains: Sequence[str], weights: torch.Tensor, max_length: int, batch_size: int = 16) -> torch.Tensor:
    """Answer loss of each row under per-row DOMAIN weights ``[B, D]`` (each stack gets its domain's weight).

    This is the ``loss_under(rows, weights)`` the router's gain-recovered figure and
    routed evaluation use; nothing is cached (router weights are continuous).
    """
    ids = [s for d in domains for s in domain_stacks.get(d, ())]
    cols = [j for j, d in enumerate(domains) for _ in domain_stacks.get(d, ())]
    w = torch.as_tensor(weights, dtype=torch.float32)[:, cols] if cols else torch.zeros(len(rows), 0)  # [B, S]
    examples = tokenize_for_loss(tokenizer, _as_rows(rows), max_length)
    losses, _ = weighted_row_losses(model, tokenizer, examples, ids, w, batch_size)
    return losses


class PairLosses:
    """Cached losses of pairs under 0/1 domain combinations (the oracle's store).

    ``ensure(requests)`` computes the missing ``(pair index, combination)`` losses in
    shared batches and stores them in the catalog; ``get`` reads one. Memory: the
    tokenized pairs (~1 KB per 256-token pair) and one float per computed loss.

    Args:
        pairs: rows with ``record_id, prompt, response`` (or ``answer``), optional ``system``.
        domain_stacks: ``domain -> stack ids``; stack_versions: ``stack id -> version``.
        cfg: ``max_length`` and ``oracle_batch_size``.
    """

    def __init__(self, model, tokenizer, pairs: pd.DataFrame, domain_stacks: Mapping[str, Sequence[str]],
                 stack_versions: Mapping[str, str], base_fingerprint: str, cfg: RouterConfig, catalog=None,
                 progress: bool = True) -> None:
        self.model, self.tokenizer, self.cfg, self.catalog = model, tokenizer, cfg, catalog
        self.pairs = _as_rows(pairs).reset_index(drop=True)
        self.domain_stacks = {d: list(s) for d, s in domain_stacks.items()}
        self.stack_ids = [s for d in self.domain_stacks for s in self.domain_stacks[d]]
        self.examples = tokenize_for_loss(tokenizer, self.pairs, cfg.max_length)
        code = loss_code_version()
        self._pair_ids = [content_hash(r["record_id"], r["prompt"], r["response"], r.get("system"), length=16)
                          for r in self.pairs.to_dict("records")]
        self._domain_key = {d: content_hash(d, [stack_versions[s] for s in ids], length=16)
                            for d, ids in self.domain_stacks.items()}
        self._prefix = content_hash(base_fingerprint, cfg.max_length, code, length=16)
        self.losses: dict[tuple[int, frozenset], float] = {}
        self.keys_used: set[str] = set()
        self.computed = self.reused = self.forwards = self.flushes = 0
        self.progress = progress

    def key(self, i: int, combo: frozenset) -> str:
        """Cache key of pair ``i`` under ``combo``: only the stacks of the combination's domains count."""
        return content_hash(self._prefix, self._pair_ids[i], sorted(self._domain_key[d] for d in combo))

    def get(self, i: int, combo: frozenset) -> float:
        """The loss of pair ``i`` under ``combo`` (must have been ensured)."""
        return self.losses[(i, frozenset(combo))]

    def ensure(self, requests: Sequence[tuple[int, frozenset]]) -> None:
        """Compute (or read from the cache) every requested loss not yet known."""
        todo = list(dict.fromkeys((i, frozenset(c)) for i, c in requests if (i, frozenset(c)) not in self.losses))
        if not todo:
            return
        keys = {r: self.key(*r) for r in todo}
        self.keys_used.update(keys.values())
        cached = self.catalog.oracle_losses(list(keys.values())) if self.catalog is not None else {}
        missing = []
        for r in todo:
            if keys[r] in cached:
                self.losses[r] = cached[keys[r]]
                self.reused += 1
            else:
                missing.append(r)
        if not missing:
            return
        missing.sort(key=lambda r: (len(self.examples[r[0]][0]), r[0]))  # one pair's combos side by side
        col = {s: j for j, s in enumerate(self.stack_ids)}
        bs = self.cfg.oracle_batch_size
        new, unflushed = [], 0
        bar = tqdm(total=len(missing), desc="oracle losses", unit="row", disable=not self.progress, leave=False)
        for start in range(0, len(missing), bs):
            chunk = missing[start:start + bs]
            w = torch.zeros(len(chunk), len(self.stack_ids))  # [B, S]
            for b, (_, combo) in enumerate(chunk):
                for d in combo:
                    for s in self.domain_stacks[d]:
                        w[b, col[s]] = 1.0
            losses, f = weighted_row_losses(self.model, self.tokenizer, [self.examples[i] for i, _ in chunk],
                                            self.stack_ids, w, bs)
            self.forwards += f
            unflushed += f
            for r, x in zip(chunk, losses.tolist()):
                self.losses[r] = float(x)
                new.append({"key": keys[r], "record_id": str(self.pairs.at[r[0], "record_id"]),
                            "combo": "+".join(sorted(r[1])) or "base", "loss": float(x),
                            "tokens": sum(t != -100 for t in self.examples[r[0]][1])})
            self.computed += len(chunk)
            if unflushed >= self.cfg.oracle_flush_forwards:  # at most K forwards are lost with a killed worker
                self._flush(new)
                new, unflushed = [], 0
            bar.update(len(chunk))
        bar.close()
        self._flush(new)

    def _flush(self, rows: list[dict]) -> None:
        """Write computed losses to the catalog (present keys are kept: a retried shard adds no duplicate)."""
        if rows and self.catalog is not None:
            self.catalog.record_oracle_losses(pd.DataFrame(rows))
            self.flushes += 1

    def frame(self, domains: Sequence[str]) -> pd.DataFrame:
        """Every loss known so far: ``record_id, combo, loss`` (combo in curriculum order)."""
        return pd.DataFrame([{"record_id": self.pairs.at[i, "record_id"], "combo": combo_name(c, domains),
                              "loss": x} for (i, c), x in self.losses.items()])
