"""Tiny base: tokenizer, chat template, build, pretrain, atomic save, fingerprint, loading."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest
import torch
from tiny_models import PROJECTIONS, TINY_MODELS, VOCAB

from brainstacks_core.base import loading, tiny_base
from brainstacks_core.base.config import BaseConfig
from brainstacks_core.base.loading import BaseModelUnavailableError, HubBaseConfig, load_base
from brainstacks_core.base.tiny_base import (
    BASE_MANIFEST,
    TinyBaseConfig,
    build_tiny_base,
    build_tiny_llama,
    fingerprint_model_dir,
    pretrain,
    train_tokenizer,
)

CFG = TinyBaseConfig(
    vocab_size=384, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, pretrain_steps=30, pretrain_lr=3e-3,
    pretrain_batch_size=8, seq_len=64, seed=0,
)
_SUBJECTS = "the cat|a dog|my friend|the old man|a small bird|the teacher".split("|")
_VERBS = "sees|likes|finds|carries|follows|draws".split("|")
_OBJECTS = "a red ball|the blue house|two green apples|the tall tree|a quiet river".split("|")


def make_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Sentences from a small grammar: enough structure for a loss to fall fast."""
    rng = random.Random(seed)
    return [
        " ".join(f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}." for _ in range(rng.randint(1, 4)))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "base"
    return build_tiny_base(corpus, CFG, out)


def _ids(tokenizer, text: str = "the cat sees a red ball. a dog follows the tall tree.") -> torch.Tensor:
    return torch.tensor([tokenizer(text)["input_ids"]])  # (1, T)


def test_config_from_dict_rejects_unknown_keys():
    assert TinyBaseConfig.from_dict({"hidden_size": 32, "seed": 3}) == TinyBaseConfig(hidden_size=32, seed=3)
    with pytest.raises(ValueError, match=r"hiden_size\s+Extra inputs are not permitted"):
        TinyBaseConfig.from_dict({"hiden_size": 32})
    with pytest.raises(ValueError, match="divisible"):
        TinyBaseConfig(hidden_size=30, num_attention_heads=4)


@pytest.mark.parametrize("revision", ["main", "", "v1.0", "abc123"])
def test_hub_config_refuses_unpinned_revision(revision):
    with pytest.raises(ValueError, match="pinned 40-hex commit sha"):
        HubBaseConfig(repo_id="TinyLlama/TinyLlama-1.1B-Chat-v1.0", revision=revision)
    with pytest.raises(ValueError, match=r"branch\s+Extra inputs are not permitted"):
        HubBaseConfig.from_dict({"repo_id": "x/y", "revision": "a" * 40, "branch": "main"})
    with pytest.raises(ValueError, match=r"revision\s+Field required"):
        HubBaseConfig.from_dict({"repo_id": "x/y"})


def test_base_section_needs_a_hub_model_for_kind_hub():
    base = BaseConfig.model_validate({"kind": "hub", "hub": {"repo_id": "x/y", "revision": "a" * 40,
                                                             "load_in_4bit": False}})
    assert base.hub == HubBaseConfig(repo_id="x/y", revision="a" * 40, load_in_4bit=False) and not base.four_bit
    assert BaseConfig.model_validate({"tiny": {"pretrain_steps": 5}}).tiny == TinyBaseConfig(pretrain_steps=5)
    with pytest.raises(ValueError, match="needs a `hub:` section"):
        BaseConfig.model_validate({"kind": "hub"})
    with pytest.raises(ValueError, match="not set"):
        HubBaseConfig(repo_id="x/y", revision=None).require_revision()


def test_tokenizer_round_trips_and_is_deterministic(corpus):
    tok = train_tokenizer(corpus, CFG.vocab_size)
    assert tok.backend_tokenizer.to_str() == train_tokenizer(corpus, CFG.vocab_size).backend_tokenizer.to_str()
    assert len(tok) <= CFG.vocab_size
    for text in ["the cat sees a red ball.", "Unseen wörds, digits 12345 and émoji 🐱!", "  two  spaces\nnewline"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok("the cat sees a red ball.")["input_ids"]) < len("the cat sees a red ball.")  # merges learned


def test_chat_template_renders_roles_and_generation_prompt(corpus):
    tok = train_tokenizer(corpus, CFG.vocab_size)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does the cat see?"},
        {"role": "assistant", "content": "A red ball."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<s><|system|>\nBe brief.</s>\n<|user|>\nWhat does the cat see?</s>\n<|assistant|>\nA red ball.</s>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat does the cat see?</s>\n<|assistant|>\n")
    assert not tok.apply_chat_template(messages[:2], tokenize=False).endswith("<|assistant|>\n")
    # {% generation %} marks exactly the assistant answer (+ its </s>) for assistant-only loss.
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    answer = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(answer) == "A red ball.</s>"
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_build_tiny_llama_has_configured_shapes(corpus):
    from transformers import LlamaForCausalLM

    tok = train_tokenizer(corpus, CFG.vocab_size)
    state = torch.random.get_rng_state()
    model = build_tiny_llama(CFG, tok)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert isinstance(model, LlamaForCausalLM)
    head_dim = CFG.hidden_size // CFG.num_attention_heads
    assert model.model.embed_tokens.weight.shape == (CFG.vocab_size, CFG.hidden_size)
    assert model.lm_head.weight.shape == (CFG.vocab_size, CFG.hidden_size)
    assert len(model.model.layers) == CFG.num_hidden_layers
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (CFG.num_attention_heads * head_dim, CFG.hidden_size)
    assert layer.self_attn.k_proj.weight.shape == (CFG.num_key_value_heads * head_dim, CFG.hidden_size)
    assert layer.mlp.down_proj.weight.shape == (CFG.hidden_size, CFG.intermediate_size)
    again = build_tiny_llama(CFG, tok)
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_pretrain_lowers_the_loss(corpus):
    tok = train_tokenizer(corpus, CFG.vocab_size)
    model = build_tiny_llama(CFG, tok)
    threads = torch.get_num_threads()
    losses = pretrain(model, tok, corpus, CFG)
    assert torch.get_num_threads() == threads  # the single-threaded section restores the setting
    assert len(losses) == CFG.pretrain_steps and all(map(torch.isfinite, torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_save_load_gives_identical_logits_and_fingerprint(built, corpus):
    # Rebuild in memory with the same inputs: the saved base must reproduce it exactly.
    tok = train_tokenizer(corpus, CFG.vocab_size)
    reference = build_tiny_llama(CFG, tok)
    pretrain(reference, tok, corpus, CFG)
    model, loaded_tok, info = load_base(built.path)
    assert loaded_tok.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert loaded_tok.chat_template == tok.chat_template
    with torch.no_grad():
        torch.testing.assert_close(model(_ids(tok)).logits, reference(_ids(tok)).logits)
    assert info == built
    assert info.fingerprint == fingerprint_model_dir(built.path)
    assert (info.source, info.revision, info.config["seq_len"]) == ("tiny", None, CFG.seq_len)
    assert not any(p.requires_grad for p in model.parameters())
    assert sorted(p.name for p in Path(built.path).glob("*.safetensors")) == ["model.safetensors"]


def test_second_build_is_skipped(built, corpus, monkeypatch):
    files = sorted(Path(built.path).iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in files}
    monkeypatch.setattr(tiny_base, "pretrain", lambda *a, **k: pytest.fail("rebuilt an up-to-date base"))
    again = build_tiny_base(iter(corpus), CFG, built.path)  # a one-shot iterable is fine too
    assert again.fingerprint == built.fingerprint
    assert {p.name: p.stat().st_mtime_ns for p in sorted(Path(built.path).iterdir())} == mtimes


def test_changed_texts_rebuild_in_place_with_new_fingerprint(built, corpus, tmp_path):
    out = tmp_path / "base"
    shutil.copytree(built.path, out)
    changed = build_tiny_base(corpus[:-1] + ["a brand new sentence about rivers."], CFG, out)
    assert changed.fingerprint != built.fingerprint
    assert changed.fingerprint == fingerprint_model_dir(out)
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temp or old folders left behind
    manifest = (out / BASE_MANIFEST).read_text()
    assert changed.fingerprint in manifest and "code_version" in manifest and "corpus_hash" in manifest


def test_tampered_base_is_refused(built, tmp_path):
    out = tmp_path / "base"
    shutil.copytree(built.path, out)
    (out / "config.json").write_text((out / "config.json").read_text().replace('"rms_norm_eps"', '"rms_norm_eps" '))
    assert fingerprint_model_dir(out) == built.fingerprint  # same JSON content, same fingerprint
    with open(out / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="modified after it was built"):
        load_base(out)


def test_4bit_nf4_load_on_cpu(built):
    import bitsandbytes as bnb

    fp32, tok, _ = load_base(built.path)
    q4, _, info = load_base(built.path, load_in_4bit=True)
    assert info.fingerprint == built.fingerprint
    for layer in q4.model.layers:
        for name in PROJECTIONS:
            parent = layer.self_attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            module = getattr(parent, name)
            assert isinstance(module, bnb.nn.Linear4bit), name
            assert module.weight.quant_state.quant_type == "nf4"
    assert not any(p.requires_grad for p in q4.parameters())
    with torch.no_grad():
        a, b = fp32(_ids(tok)).logits.flatten(), q4(_ids(tok)).logits.flatten()
    assert torch.isfinite(b).all() and not torch.equal(a, b)  # really quantized
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95


def test_hub_load_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = HubBaseConfig(repo_id="brainstacks-test/does-not-exist", revision="0123456789abcdef" * 2 + "01234567")
    start = time.monotonic()
    with pytest.raises(BaseModelUnavailableError) as err:
        load_base(config)
    assert time.monotonic() - start < 10
    message = str(err.value)
    for part in ("brainstacks-test/does-not-exist", config.revision, "HF_HUB_OFFLINE", "hf download", "`base.kind: local`",
                 "`base.local.path`"):
        assert part in message


def test_hub_load_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    import socket

    with socket.socket() as sock:  # a local port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert not loading._hub_reachable()
    start = time.monotonic()
    with pytest.raises(BaseModelUnavailableError, match=f"127.0.0.1:{port} is unreachable"):
        load_base(HubBaseConfig(repo_id="brainstacks-test/does-not-exist", revision="f" * 40))
    assert time.monotonic() - start < 10


def test_load_base_rejects_a_folder_without_a_model_or_tokenizer(built, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_base(tmp_path)
    shutil.copy(Path(built.path) / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_base(tmp_path)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_models_build_and_forward(name):
    model = TINY_MODELS[name](seed=1)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits  # (B, T, V)
    assert logits.shape == (2, 12, VOCAB) and torch.isfinite(logits).all()
    for proj in PROJECTIONS:
        found = [m for n, m in model.named_modules() if n.endswith("." + proj)]
        assert len(found) == 2 and all(isinstance(m, torch.nn.Linear) for m in found), proj
    torch.testing.assert_close(TINY_MODELS[name](seed=1).state_dict(), model.state_dict(), rtol=0, atol=0)


def test_trl_sft_masks_exactly_the_assistant_answer(built, tmp_path):
    """The chat template's contract with trl: assistant-only loss on ``messages`` rows."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok, _ = load_base(built.path)
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"what {i}?"},
                          {"role": "assistant", "content": "a red ball."}]} for i in range(4)]
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                     gradient_checkpointing=False, max_length=64, per_device_train_batch_size=4,
                     assistant_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        assert tok.decode(ids[labels != -100]) == "a red ball.</s>"
