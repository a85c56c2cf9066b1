"""The paper's three panels (section 5, figure "one domain / ungated / routed") on a few prompts.

For each prompt the same greedy decoding runs three times on one model:

* ``own``: only the stacks of the prompt's nominal domain (what a single-domain
  adapter would answer),
* ``ungated``: every stack at weight 1 (what naive stacking answers),
* ``routed``: the router's per-prompt weights, after the chat floor and gate.

Decoding is greedy (``do_sample=False``) so the panels are reproducible and a
difference between panels is the stacks' doing, not sampling noise. Memory: one
prompt at a time, ``max_new_tokens`` tokens of KV cache (at Gemma-3-12B shapes,
48 layers x 2 x 8 KV heads x 256 x 2 B = 384 KiB per token in bf16).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import pandas as pd
import torch

from brainstacks_core.stacks.inject import only_stacks, row_weights
from brainstacks_core.training.sft_data import to_messages

log = logging.getLogger(__name__)


def _prompt_ids(tokenizer, row: Mapping, device) -> torch.Tensor:
    """``[1, T]`` token ids of the row's prompt with the generation prompt appended."""
    prompt, _ = to_messages({"response": "", **dict(row)})
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)


@torch.no_grad()
def greedy_answer(model, tokenizer, row: Mapping, max_new_tokens: int) -> str:
    """Greedy completion of one row's prompt under the model's current stack weights."""
    device = next(model.parameters()).device
    ids = _prompt_ids(tokenizer, row, device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def three_panels(model, tokenizer, rows: pd.DataFrame, router, domain_stacks: Mapping[str, Sequence[str]],
                 max_new_tokens: int = 32) -> pd.DataFrame:
    """Answers of each row's prompt with its own domain's stacks, ungated, and routed.

    Args:
        model, tokenizer: the base with every frozen stack of the run attached.
        rows: prompts with ``prompt`` (optional ``system``) and ``source_domain`` columns.
        router: an :class:`~brainstacks_core.evaluation.routing.Router` (weights after floor and gate).
        domain_stacks: ``domain -> stack ids`` of the run.
        max_new_tokens: tokens generated per answer.

    Returns:
        One row per prompt: ``source_domain, prompt, own, ungated, routed, routing`` where
        ``routing`` is the routed ``{domain: weight}`` (non-zero weights only).
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        records = rows.to_dict("records")
        weights = router.domain_weights([str(r["prompt"]) for r in records]).detach().float().cpu()  # [N, D]
        for r, w in zip(records, weights):
            with only_stacks(model, list(domain_stacks.get(r["source_domain"], ()))):
                own = greedy_answer(model, tokenizer, r, max_new_tokens)
            with only_stacks(model, None):
                ungated = greedy_answer(model, tokenizer, r, max_new_tokens)
            ids = [s for d in router.domains for s in domain_stacks.get(d, ())]
            flat = torch.tensor([[float(x) for d, x in zip(router.domains, w.tolist())
                                  for _ in domain_stacks.get(d, ())]], dtype=torch.float32)  # [1, S]
            with row_weights(model, ids, flat):
                routed = greedy_answer(model, tokenizer, r, max_new_tokens)
            out.append({"source_domain": r["source_domain"], "prompt": str(r["prompt"]), "own": own,
                        "ungated": ungated, "routed": routed,
                        "routing": {d: round(float(x), 3) for d, x in zip(router.domains, w.tolist()) if x > 0}})
    finally:
        model.train(was_training)
    return pd.DataFrame(out)


def panels_markdown(panels: pd.DataFrame, width: int = 160) -> str:
    """The panels as a markdown section: per prompt, its routing and the three answers."""
    def clip(s: str) -> str:
        s = " ".join(str(s).split()).replace("|", "\\|")
        return s if len(s) <= width else s[:width - 1] + "…"

    lines = []
    for r in panels.to_dict("records"):
        routing = ", ".join(f"{d} {w:.2f}" for d, w in r["routing"].items()) or "none (base only)"
        lines += [f"**{r['source_domain']}**: {clip(r['prompt'])}", "", f"routing: {routing}", "",
                  "| stacks | answer |", "|---|---|",
                  f"| own ({r['source_domain']}) | {clip(r['own'])} |",
                  f"| ungated (all) | {clip(r['ungated'])} |",
                  f"| routed | {clip(r['routed'])} |", ""]
    return "\n".join(lines)
