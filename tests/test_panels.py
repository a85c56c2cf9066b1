"""The report's three panels: own-domain, ungated and routed answers on one model (issue 10, item 5)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from brainstacks_core.base.config import TinyBaseConfig
from brainstacks_core.base.tiny_base import build_tiny_llama, train_tokenizer
from brainstacks_core.evaluation.routing import FixedRouter
from brainstacks_core.routing.panels import greedy_answer, panels_markdown, three_panels
from brainstacks_core.stacks.inject import (
    add_active_stack,
    freeze_active_stack,
    inject_stacks,
    only_stacks,
    stacked_layers,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig

TEXTS = ["hello there how are you", "def f(x): return x + 1", "two plus two is four", "the patient has a fever"]


@pytest.fixture(scope="module")
def model_tok():
    tok = train_tokenizer(TEXTS * 4, vocab_size=300)
    model = build_tiny_llama(TinyBaseConfig(vocab_size=320, hidden_size=32, intermediate_size=64,
                                            num_attention_heads=4, num_key_value_heads=2), tok)
    inject_stacks(model, MoELoRAConfig(num_experts=4, rank=4, alpha=8))
    g = torch.Generator().manual_seed(3)
    for i, sid in enumerate(["chat-r0", "math-r0"]):
        add_active_stack(model, sid, seed=i)
        with torch.no_grad():
            for layer in stacked_layers(model).values():
                layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 3.0)
        freeze_active_stack(model)
    return model.eval(), tok


STACKS = {"chat": ["chat-r0"], "math": ["math-r0"]}


def test_panels_use_own_ungated_and_routed_stacks(model_tok):
    model, tok = model_tok
    rows = pd.DataFrame([{"prompt": "two plus two", "source_domain": "math"},
                         {"prompt": "hello there", "source_domain": "chat"}])
    # math prompts routed to chat only; chat prompts to nothing (the bare base)
    router = FixedRouter(["chat", "math"], {}, rules=[("two", {"chat": 1.0})])
    panels = three_panels(model, tok, rows, router, STACKS, max_new_tokens=6)

    def answer(keep, row):
        with only_stacks(model, keep):
            return greedy_answer(model, tok, row, 6)

    math_row, chat_row = rows.to_dict("records")
    assert panels.loc[0, "own"] == answer(["math-r0"], math_row)
    assert panels.loc[0, "ungated"] == answer(None, math_row)
    assert panels.loc[0, "routed"] == answer(["chat-r0"], math_row)
    assert panels.loc[1, "routed"] == answer([], chat_row)
    assert panels.loc[0, "routing"] == {"chat": 1.0} and panels.loc[1, "routing"] == {}
    # the stacks change the answers (otherwise the equalities above prove nothing)
    assert len({answer(k, math_row) for k in (["math-r0"], ["chat-r0"], [], None)}) > 1
    md = panels_markdown(panels)
    assert "| routed |" in md and "routing: chat 1.00" in md and "none (base only)" in md
