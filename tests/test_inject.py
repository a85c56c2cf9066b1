"""inject_stacks on tiny Llama, Qwen2, Gemma-3 (text) and Mistral, and over NF4 ``Linear4bit`` on CPU."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_models import PROJECTIONS, TINY_MODELS, tiny_llama
from torch import nn

from brainstacks_core.stacks.inject import (
    active_parameters,
    add_active_stack,
    collect_aux_loss,
    inject_stacks,
    name_matches,
    stacked_layers,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.stacked_layer import StackedMoELoRALayer

CFG = MoELoRAConfig(num_experts=4, rank=4, alpha=8)
PROJ_RE = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)")
ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}


def _ids(vocab: int = 128, shape: tuple[int, int] = (2, 12)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_injects_seven_projections_per_layer(arch):
    model = TINY_MODELS[arch]()
    n_layers = model.config.num_hidden_layers
    linears_before = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = inject_stacks(model, CFG)

    assert len(names) == 7 * n_layers
    assert len(set(names)) == len(names)
    seen = set()
    for name in names:
        m = PROJ_RE.fullmatch(name)
        assert m, f"unexpected injected module {name}"
        layer, block, proj = m.groups()
        assert proj in PROJECTIONS and (block == "self_attn") == (proj in ATTN)
        seen.add((int(layer), proj))
        wrapped = model.get_submodule(name)
        assert isinstance(wrapped, StackedMoELoRALayer)
        assert wrapped.base_layer is linears_before[name]  # the original module, not a copy
        assert (wrapped.in_features, wrapped.out_features) == (wrapped.base_layer.in_features,
                                                               wrapped.base_layer.out_features)
    assert seen == {(i, p) for i in range(n_layers) for p in PROJECTIONS}
    assert list(stacked_layers(model)) == names  # returned in model order
    assert "lm_head" not in names
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_zero_init_active_stack_leaves_logits_identical(arch):
    model, ids = TINY_MODELS[arch](), _ids()
    with torch.no_grad():
        ref = model(ids).logits
    inject_stacks(model, CFG)
    params = add_active_stack(model, "s1", seed=0)
    assert params and all(p.requires_grad for p in params)
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    for mode in ("eval", "train"):  # train mode adds router noise, which zero B must still cancel
        getattr(model, mode)()
        with torch.no_grad():
            out = model(ids).logits
        assert torch.equal(out, ref), f"{arch} ({mode}): max diff {(out - ref).abs().max()}"


def test_match_by_exact_name():
    model = tiny_llama()
    names = inject_stacks(model, CFG, targets=["model.layers.1.self_attn.q_proj"])
    assert names == ["model.layers.1.self_attn.q_proj"]
    assert not isinstance(model.model.layers[0].self_attn.q_proj, StackedMoELoRALayer)


def test_match_by_suffix():
    model = tiny_llama()
    names = inject_stacks(model, CFG, targets=["down_proj", "self_attn.v_proj"])
    assert names == ["model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj",
                     "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"]


def test_suffix_match_respects_name_boundaries():
    assert name_matches("model.layers.0.mlp.up_proj", ["up_proj"])
    assert not name_matches("model.layers.0.mlp.xup_proj", ["up_proj"])  # ".up_proj", not "up_proj"
    assert not name_matches("model.layers.0.mlp.up_proj.extra", ["up_proj"])


def test_match_by_regex():
    model = tiny_llama()
    names = inject_stacks(model, CFG, targets=[r"re:.*\.1\.self_attn\.(q|k)_proj"])
    assert names == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]
    # fullmatch, not search: a partial pattern matches nothing
    with pytest.raises(ValueError):
        inject_stacks(tiny_llama(), CFG, targets=["re:q_proj"])


def test_config_targets_are_the_default():
    model = tiny_llama()
    names = inject_stacks(model, MoELoRAConfig(num_experts=2, rank=2, top_k=1, targets=("o_proj",)))
    assert names == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]


def test_no_match_raises_helpful_error():
    model = tiny_llama()
    with pytest.raises(ValueError) as err:
        inject_stacks(model, CFG, targets=["qkv_proj", "re:nothing.*"])
    msg = str(err.value)
    assert "qkv_proj" in msg and "re:nothing.*" in msg  # names the targets asked for
    assert "model.layers.0.self_attn.q_proj" in msg  # and shows linear modules that exist
    assert not stacked_layers(model)


def test_non_linear_module_with_matching_name_is_not_wrapped():
    model = tiny_llama()
    with pytest.raises(ValueError):
        inject_stacks(model, CFG, targets=["mlp", "self_attn", "embed_tokens"])


def test_injecting_twice_does_not_double_wrap():
    model, ids = tiny_llama(), _ids()
    first = inject_stacks(model, CFG)
    layers = stacked_layers(model)
    add_active_stack(model, "s1", seed=0)
    with pytest.raises(ValueError):  # nothing new left to wrap
        inject_stacks(model, CFG)
    assert stacked_layers(model) == layers  # same objects, same active stacks
    assert len(first) == len(layers) == 14
    for name, layer in layers.items():
        assert not isinstance(layer.base_layer, StackedMoELoRALayer), name
        assert layer.active_id == "s1"
    assert not any(".base_layer." in n and isinstance(m, StackedMoELoRALayer) for n, m in model.named_modules())
    # a second pass with a wider target set wraps only what is new
    more = inject_stacks(model, CFG, targets=list(PROJECTIONS) + ["lm_head"])
    assert more == ["lm_head"]
    assert not isinstance(model.lm_head.base_layer, StackedMoELoRALayer)
    with torch.no_grad():
        model(ids)


# ----------------------------------------------------------------------------- 4-bit (NF4) on CPU
def test_inject_over_linear4bit_trains_only_the_stack(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama().save_pretrained(tmp_path)
    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=qcfg, device_map="cpu",
                                                 dtype=torch.float32)
    names = inject_stacks(model, CFG)
    layers = stacked_layers(model)
    assert len(names) == 7 * model.config.num_hidden_layers
    for name, layer in layers.items():
        assert isinstance(layer.base_layer, bnb.nn.Linear4bit), f"{name}: {type(layer.base_layer)}"
        assert layer.base_layer.weight.dtype == torch.uint8  # packed NF4
    assert not any(p.requires_grad for p in model.parameters())

    add_active_stack(model, "s1", seed=0)
    with torch.no_grad():  # non-zero B so A and the router get gradients too
        for layer in layers.values():
            layer.active.lora_B.normal_(std=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    ids = _ids()
    out = model(input_ids=ids, labels=ids)
    aux = collect_aux_loss(model)
    assert aux is not None and aux.requires_grad
    (out.loss + CFG.aux_loss_coef * aux).backward()

    params = active_parameters(model)
    assert len(params) == 4 * len(layers)  # lora_A, lora_B, router, noise_linear
    for name, layer in layers.items():
        for pname, p in layer.active.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    opt = torch.optim.AdamW(params, lr=1e-2)
    opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, n
            assert torch.equal(p.detach(), before[n]), f"frozen {n} changed"
    assert all(torch.equal(layer.base_layer.weight, before[f"{name}.base_layer.weight"])
               for name, layer in layers.items())


def test_reinjecting_keeps_the_active_stack_trainable():
    model = tiny_llama()
    inject_stacks(model, CFG)
    params = add_active_stack(model, "s1", seed=0)
    with pytest.raises(ValueError):
        inject_stacks(model, CFG)  # nothing new to wrap
    assert all(p.requires_grad for p in params)


def tiny_gemma3_multimodal():
    """``Gemma3ForConditionalGeneration`` with a 1-layer SigLIP tower, from config classes (random init)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                            sliding_window=16)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=127,
                          boi_token_index=125, eoi_token_index=126)
    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(config).eval()


def test_gemma3_multimodal_wraps_the_language_model_only():
    model, ids = tiny_gemma3_multimodal(), _ids(vocab=120)
    vision_linears = [n for n, m in model.named_modules() if n.startswith("model.vision_tower.")
                      and isinstance(m, nn.Linear)]
    assert any(n.endswith(("q_proj", "k_proj", "v_proj")) for n in vision_linears)  # suffixes that would match
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    names = inject_stacks(model, CFG)
    assert len(names) == 7 * model.config.text_config.num_hidden_layers
    assert all(n.startswith("model.language_model.layers.") for n in names)
    for n in vision_linears:
        assert not isinstance(model.get_submodule(n), StackedMoELoRALayer), f"{n} was wrapped"
    params = add_active_stack(model, "s1", seed=0)
    assert all(".language_model." in n for n, p in model.named_parameters() if p.requires_grad)
    assert len(params) == 4 * len(names)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)
