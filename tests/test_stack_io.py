"""Stack files: bit-exact round trip; corruption, wrong shapes and wrong base refused."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama

from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, inject_stacks, stacked_layers
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.stack_io import StackFileError, attach_stack, load_stack, save_stack

CFG = MoELoRAConfig(num_experts=4, rank=4, alpha=8, frozen_dtype="float32")


def _trained_model(seed=0, cfg=CFG, with_basis=True):
    model = build_tiny_llama(seed=0)
    inject_stacks(model, cfg)
    layers = stacked_layers(model)
    bases = {n: torch.linalg.qr(torch.randn(l.out_features, 2))[0].T.contiguous() for n, l in layers.items()}
    add_active_stack(model, "chat-r1", bases=bases if with_basis else None, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers.values():
            layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 0.2)
    freeze_active_stack(model)
    return model


def test_round_trip_is_bit_exact(tmp_path, input_ids):
    model = _trained_model()
    path = tmp_path / "stacks" / "chat-r1.safetensors"
    lineage = {"train_dataset": "abc123", "parents": [], "code_version": "x"}
    saved = save_stack(path, model, "chat-r1", domain="chat", round_index=1, base_fingerprint="fp1", lineage=lineage)
    assert not list(path.parent.glob("*.tmp")), "temp file left behind"
    loaded = load_stack(path, base_fingerprint="fp1")
    assert loaded.metadata["lineage"] == lineage and loaded.metadata["domain"] == "chat"
    assert loaded.metadata["round"] == 1 and loaded.config == CFG
    assert loaded.file_sha256 == saved.file_sha256
    for name, layer in stacked_layers(model).items():
        for part in ("lora_A", "lora_B", "router", "basis"):
            assert torch.equal(loaded.tensors[f"{name}.{part}"], getattr(layer.frozen["chat-r1"], part))
    expected = model(input_ids).logits
    fresh = build_tiny_llama(seed=0)
    inject_stacks(fresh, CFG)
    attach_stack(fresh, loaded)
    assert torch.equal(fresh(input_ids).logits, expected)


def test_bf16_frozen_round_trip(tmp_path):
    cfg = MoELoRAConfig(num_experts=4, rank=4, alpha=8, frozen_dtype="bfloat16")
    model = _trained_model(cfg=cfg)
    save_stack(tmp_path / "s.safetensors", model, "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")
    loaded = load_stack(tmp_path / "s.safetensors")
    name = next(iter(stacked_layers(model)))
    assert loaded.tensors[f"{name}.lora_B"].dtype == torch.bfloat16
    assert torch.equal(loaded.tensors[f"{name}.lora_B"], stacked_layers(model)[name].frozen["chat-r1"].lora_B)


def test_flipped_byte_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    save_stack(path, _trained_model(), "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(StackFileError, match="checksum mismatch"):
        load_stack(path)
    data[3] ^= 0xFF  # header length
    path.write_bytes(bytes(data))
    with pytest.raises(StackFileError, match="not a readable"):
        load_stack(path)


def test_wrong_base_fingerprint_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    save_stack(path, _trained_model(), "chat-r1", domain="chat", round_index=1, base_fingerprint="fp-A")
    with pytest.raises(StackFileError, match="fp-A"):
        load_stack(path, base_fingerprint="fp-B")


def test_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    save_stack(path, _trained_model(), "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")
    wider = build_tiny_llama(seed=0, hidden=48)
    inject_stacks(wider, CFG)
    with pytest.raises(StackFileError, match="does not fit"):
        attach_stack(wider, load_stack(path))
    deeper = build_tiny_llama(seed=0, layers=3)
    inject_stacks(deeper, CFG)
    with pytest.raises(StackFileError, match="layers do not match"):
        attach_stack(deeper, load_stack(path))


def test_never_unpickles(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(2)}, path)  # a pickle file with the right extension
    with pytest.raises(StackFileError):
        load_stack(path)


def test_stack_trained_with_another_moe_config_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    save_stack(path, _trained_model(), "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")
    other = build_tiny_llama(seed=0)
    inject_stacks(other, MoELoRAConfig(num_experts=4, rank=4, alpha=16))  # same shapes, twice the scale
    with pytest.raises(StackFileError, match="alpha"):
        attach_stack(other, load_stack(path))


def test_load_reads_and_hashes_the_file_once(tmp_path, monkeypatch):
    import hashlib

    import brainstacks_core.stacks.stack_io as stack_io

    path = tmp_path / "s.safetensors"
    saved = save_stack(path, _trained_model(), "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")
    assert saved.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    calls = {"sha": 0, "tensor": 0}
    sha, tensor = stack_io.sha256_bytes, stack_io.tensor_checksum
    monkeypatch.setattr(stack_io, "sha256_bytes", lambda d: calls.__setitem__("sha", calls["sha"] + 1) or sha(d))
    monkeypatch.setattr(stack_io, "tensor_checksum",
                        lambda t: calls.__setitem__("tensor", calls["tensor"] + 1) or tensor(t))
    loaded = load_stack(path, expected_sha256=saved.file_sha256)
    assert calls == {"sha": 1, "tensor": 0} and loaded.file_sha256 == saved.file_sha256
    for name, t in saved.tensors.items():
        assert torch.equal(loaded.tensors[name], t)
    load_stack(path)  # no expected checksum: the stored tensor checksum is verified instead
    assert calls == {"sha": 2, "tensor": 1}
    with pytest.raises(StackFileError, match="file checksum mismatch"):
        load_stack(path, expected_sha256="0" * 64)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StackFileError, match="file checksum mismatch"):
        load_stack(path, expected_sha256=saved.file_sha256)
    assert load_stack(path, verify=False).stack_id == "chat-r1"  # explicitly unverified


def test_blake3_recorded_at_save_is_the_fast_check_and_refuses_a_flipped_byte(tmp_path, monkeypatch):
    import blake3

    import brainstacks_core.stacks.stack_io as stack_io

    path = tmp_path / "s.safetensors"
    saved = save_stack(path, _trained_model(), "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")
    assert saved.file_blake3 == blake3.blake3(path.read_bytes()).hexdigest()
    calls = {"sha": 0}
    sha = stack_io.sha256_bytes
    monkeypatch.setattr(stack_io, "sha256_bytes", lambda d: calls.__setitem__("sha", calls["sha"] + 1) or sha(d))
    loaded = load_stack(path, expected_sha256=saved.file_sha256, expected_blake3=saved.file_blake3)
    assert calls["sha"] == 0, "with a recorded BLAKE3 the load must not also run sha256"
    assert loaded.file_sha256 == saved.file_sha256 and loaded.file_blake3 == saved.file_blake3
    for name, t in saved.tensors.items():
        assert torch.equal(loaded.tensors[name], t)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StackFileError, match="BLAKE3"):
        load_stack(path, expected_sha256=saved.file_sha256, expected_blake3=saved.file_blake3)


@pytest.mark.parametrize("damage", ["overlap", "short_shape", "trailing"])
def test_in_place_parse_checks_the_layout(tmp_path, damage):
    import json
    import struct

    path = tmp_path / "s.safetensors"
    save_stack(path, _trained_model(), "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    name = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[1]
    if damage == "overlap":
        header[name]["data_offsets"][0] -= 4
    elif damage == "short_shape":
        header[name]["shape"][0] -= 1
    else:
        body += b"\0" * 8
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    with pytest.raises(StackFileError, match="not a readable"):
        load_stack(path, verify=False)


def test_thawed_stack_equals_frozen_and_trains(tmp_path, input_ids):
    from brainstacks_core.stacks.inject import collect_aux_loss
    from brainstacks_core.stacks.stack_io import thaw_stack

    model = build_tiny_llama(seed=0)
    inject_stacks(model, CFG)
    layers = stacked_layers(model)
    bases = {n: torch.linalg.qr(torch.randn(l.out_features, 2))[0].T.contiguous() for n, l in layers.items()}
    add_active_stack(model, "chat-r1", bases=bases, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers.values():
            layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 0.2)
            layer.active.noise_linear.weight.copy_(torch.randn(layer.active.noise_linear.weight.shape,
                                                               generator=g) * 0.1)
    noise = {n: l.active.noise_linear.weight.detach().clone() for n, l in layers.items()}
    freeze_active_stack(model)
    frozen_logits = model(input_ids).logits
    path = tmp_path / "s.safetensors"
    save_stack(path, model, "chat-r1", domain="chat", round_index=1, base_fingerprint="fp")

    fresh = build_tiny_llama(seed=0)
    inject_stacks(fresh, CFG)
    params = thaw_stack(fresh, load_stack(path))
    fresh_layers = stacked_layers(fresh)
    for name, layer in fresh_layers.items():
        assert layer.active_id == "chat-r1" and not layer.frozen
        assert torch.equal(layer.active.noise_linear.weight, noise[name])  # the noise projection came back
        torch.testing.assert_close(layer.active_basis, bases[name])
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids).logits, frozen_logits, rtol=1e-5, atol=1e-5)
    assert params and all(p.requires_grad for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    fresh.train()
    before = {n: l.active.lora_B.detach().clone() for n, l in fresh_layers.items()}
    losses = []
    for _ in range(3):
        loss = fresh(input_ids, labels=input_ids).loss
        losses.append(loss.item())
        (loss + 0.01 * collect_aux_loss(fresh)).backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0]
    assert all(not torch.equal(l.active.lora_B, before[n]) for n, l in fresh_layers.items())
    name = next(iter(fresh_layers))  # still trained under the same null space
    x = torch.randn(3, fresh_layers[name].in_features)
    fresh.eval()
    with torch.no_grad():
        d = fresh_layers[name](x) - fresh_layers[name].base_layer(x)
    assert (d @ bases[name].T).abs().max() < 1e-5
    # thawing a stack that is frozen in the same model replaces the frozen copy
    thaw_stack(model, load_stack(path))
    assert all(l.active_id == "chat-r1" and "chat-r1" not in l.frozen for l in layers.values())


def test_safetensors_bytes_do_not_depend_on_the_process(tmp_path):
    """safetensors orders ``__metadata__`` by a per-process hash map: the same content written by two
    processes must still be the same bytes (a router trained identically on two hosts, one version)."""
    import subprocess
    import sys

    code = ("import sys, torch; from safetensors.torch import save_file; "
            "from brainstacks_core.files import canonicalize_safetensors; "
            "p = sys.argv[1]; md = {k: k * 3 for k in 'abcdefghijklmnop'}; "
            "save_file({'w': torch.arange(6.0).reshape(2, 3), 'b': torch.ones(3)}, p, metadata=md); "
            "canonicalize_safetensors(p) if sys.argv[2] == '1' else None")
    raw = set()
    canon = set()
    for i in range(6):
        for flag, out in (("0", raw), ("1", canon)):
            f = tmp_path / f"{flag}-{i}.safetensors"
            subprocess.run([sys.executable, "-c", code, str(f), flag], check=True)
            out.add(f.read_bytes())
    assert len(canon) == 1  # canonical: one byte string whatever the process
    assert len(raw) > 1  # without it, processes disagree (16 metadata keys: a hash map's order varies)
    from safetensors.torch import load_file

    t = load_file(tmp_path / "1-0.safetensors")
    assert t["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
