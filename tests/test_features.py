"""Router features: the base's hidden states, from the decoder alone (no LM head, no full-vocabulary logits)."""

from __future__ import annotations

import torch

from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.features import prompt_features
from brainstacks_core.stacks.inject import inject_stacks
from brainstacks_core.stacks.moe_lora import MoELoRAConfig


def test_features_skip_the_lm_head_and_equal_the_causal_lms_hidden_states():
    prompts = ["What is 7 times 6?", "Name a fruit that is yellow and long, please."]
    tok = train_tokenizer(prompts * 4, 300)
    model = build_tiny_llama(TinyBaseConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=3), tok)
    inject_stacks(model, MoELoRAConfig(num_experts=4, rank=2, alpha=4))
    cfg = RouterConfig(max_length=32)
    head_calls = []
    handle = model.lm_head.register_forward_hook(lambda *_: head_calls.append(1))
    feats, mask = prompt_features(model, tok, prompts, cfg)
    assert head_calls == [], "router features ran the LM head (full-vocabulary logits)"
    handle.remove()
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    mid, last = 3 // 2, 3
    want = cfg.feature_mix * hs[mid] + (1 - cfg.feature_mix) * hs[last]
    torch.testing.assert_close(feats, want * enc["attention_mask"].bool().unsqueeze(-1))
    assert torch.equal(mask, enc["attention_mask"].bool())


def test_a_loaded_router_runs_on_the_base_models_device(tmp_path):
    """A GPU worker routes on its GPU: the network follows the base (here the meta device stands in for cuda)."""
    from brainstacks_core.routing.router import MetaRouter, load_trained_router, save_router

    cfg = RouterConfig(max_length=32)
    save_router(tmp_path, MetaRouter(32, 3, cfg), ["a", "b", "c"], cfg, {"oracle_version": "o"})
    base = torch.nn.Linear(4, 4).to("meta")
    router = load_trained_router(tmp_path, base, tokenizer=None, cfg=cfg)
    assert next(router.net.parameters()).device.type == "meta"
