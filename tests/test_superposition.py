"""Routed inference and the stack store (issue 10, item 4): LRU by bytes, checksum once per file version,
gated stacks never loaded, routed == row weights of the same stacks, batched == alone, ``brainstacks generate``."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import brainstacks_core.stacks.stack_io as stack_io
from brainstacks_core.base.config import TinyBaseConfig
from brainstacks_core.base.tiny_base import build_tiny_llama, train_tokenizer
from brainstacks_core.evaluation.routing import FixedRouter
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.stack_store import StackEntry, StackStore, stack_nbytes
from brainstacks_core.routing.superposition import RoutedModel, plan_routes
from brainstacks_core.stacks.inject import (
    add_active_stack,
    freeze_active_stack,
    inject_stacks,
    only_stacks,
    row_weights,
    stack_ids,
    stacked_layers,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.stack_io import StackFileError, attach_stack, load_stack, save_stack

TEXTS = ["hello there how are you", "def f(x): return x + 1", "two plus two is four", "sum of the primes"]
MOE = MoELoRAConfig(num_experts=4, rank=4, alpha=8)
STACKS = {"chat": ["chat-r1"], "code": ["code-r1"], "math": ["math-r1", "math-r2"]}
DOMAINS = list(STACKS)
CFG = RouterConfig(chat_floor=0.2, gate_threshold=0.12)
# "sum" prompts: math 0.7, code 0.1 (under the gate), chat 0 -> floored to 0.2; "def": code 0.9 only (chat
# floored); anything else: chat 1.0 only.
ROUTER = FixedRouter(DOMAINS, {"chat": 1.0}, rules=[("sum", {"math": 0.7, "code": 0.1}), ("def", {"code": 0.9})])


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 4, vocab_size=300)


@pytest.fixture(scope="module")
def base(tok):
    return build_tiny_llama(TinyBaseConfig(vocab_size=320, hidden_size=32, intermediate_size=64,
                                           num_attention_heads=4, num_key_value_heads=2), tok)


@pytest.fixture(scope="module")
def files(base, tmp_path_factory):
    """Every stack of :data:`STACKS` saved to its own file (random B, so each one changes the output)."""
    folder = tmp_path_factory.mktemp("stacks")
    model = copy.deepcopy(base)
    inject_stacks(model, MOE)
    g = torch.Generator().manual_seed(3)
    out = {}
    for i, sid in enumerate(s for ids in STACKS.values() for s in ids):
        add_active_stack(model, sid, seed=i)
        with torch.no_grad():
            for layer in stacked_layers(model).values():
                layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 2.0)
        freeze_active_stack(model)
        dom = sid.split("-")[0]
        out[sid] = save_stack(folder / f"{sid}.safetensors", model, sid, domain=dom, round_index=1,
                              base_fingerprint="fp")
    return out


def _entries(files, folder: Path | None = None) -> dict[str, StackEntry]:
    """Store entries; with ``folder``, each file copied there first (a test may then edit its copies)."""
    out = {}
    for sid, sf in files.items():
        path = sf.path
        if folder is not None:
            path = folder / sf.path.name
            path.write_bytes(sf.path.read_bytes())
        out[sid] = StackEntry(sid, sid.split("-")[0], path, sf.file_sha256, f"v-{sid}")
    return out


def _store(base, entries, budget=None) -> StackStore:
    model = copy.deepcopy(base)
    inject_stacks(model, MOE)
    return StackStore(model, entries, budget_bytes=budget, base_fingerprint="fp")


@pytest.fixture(scope="module")
def reference(base, files):
    """The base with EVERY stack attached (how routed evaluation and the panels run)."""
    model = copy.deepcopy(base)
    inject_stacks(model, MOE)
    for sf in files.values():
        attach_stack(model, load_stack(sf.path, base_fingerprint="fp"))
    return model.eval()


def _ids(tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_lru_by_bytes_evicts_least_recently_used(base, files):
    one = _store(base, _entries(files))
    one.ensure(["chat-r1"])
    size = stack_nbytes(one.model, "chat-r1")
    assert one.stats.bytes_held == size > 0
    store = _store(base, _entries(files), budget=2 * size)  # every stack here has the same shapes
    store.ensure(["chat-r1"])
    store.ensure(["code-r1"])
    assert store.ensure(["chat-r1"]) == [] and store.stats.hits == 1  # chat is now the most recent
    assert store.ensure(["math-r1"]) == ["math-r1"]
    assert store.attached == ["chat-r1", "math-r1"] and store.stats.evictions == 1  # code was the LRU
    assert stack_ids(store.model) == ["chat-r1", "math-r1"]  # detached from the model, not only forgotten
    assert store.stats.bytes_held == 2 * size and store.stats.misses == 3
    # one call needing more than the budget gets all its stacks; the next call shrinks back
    store.ensure(["chat-r1", "code-r1", "math-r2"])
    assert set(store.attached) == {"chat-r1", "code-r1", "math-r2"} and store.stats.over_budget == 1
    store.ensure(["code-r1"])
    assert store.stats.bytes_held <= 2 * size and store.attached[-1] == "code-r1"
    line = store.summary()
    for part in ("hits", "misses", "evictions", "verified by hash", "ms", "MB held"):
        assert part in line


def test_checksum_verified_once_per_file_version(base, files, tmp_path, monkeypatch):
    hashed = []
    real = stack_io.sha256_bytes
    monkeypatch.setattr(stack_io, "sha256_bytes", lambda data: hashed.append(len(data)) or real(data))
    entries = _entries(files, tmp_path)
    store = _store(base, entries)
    store.ensure(["chat-r1"])
    assert len(hashed) == 1 and store.stats.hashes == 1
    for _ in range(2):  # warm re-loads of the same file version: read and parsed, not hashed
        store.evict("chat-r1")
        assert store.ensure(["chat-r1"]) == ["chat-r1"]
    assert len(hashed) == 1 and store.stats.misses == 3 and stack_ids(store.model) == ["chat-r1"]

    path = entries["chat-r1"].path  # a new version with the same bytes (replaced): verified again, accepted
    data = path.read_bytes()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    store.evict("chat-r1")
    store.ensure(["chat-r1"])
    assert len(hashed) == 2

    tampered = bytearray(data)  # one byte of tensor data flipped: still a readable file, other bytes
    tampered[-3] ^= 0xFF
    path.write_bytes(bytes(tampered))
    store.evict("chat-r1")
    with pytest.raises(StackFileError, match=r"chat-r1\.safetensors.*checksum mismatch"):
        store.ensure(["chat-r1"])
    assert len(hashed) == 3 and "chat-r1" not in stack_ids(store.model) and store.attached == []
    with pytest.raises(StackFileError, match="checksum mismatch"):  # refused again: never remembered as verified
        store.ensure(["chat-r1"])


@torch.no_grad()
def test_stacks_under_the_gate_are_never_loaded(base, files, reference, tok, tmp_path, monkeypatch):
    entries = _entries(files, tmp_path)
    entries["code-r1"].path.write_bytes(b"not a stack file")  # reading it would fail
    read = []
    real = stack_io.load_stack
    monkeypatch.setattr("brainstacks_core.routing.stack_store.load_stack",
                        lambda path, **kw: read.append(Path(path).name) or real(path, **kw))
    store = _store(base, entries)
    routed = RoutedModel(store.model, tok, ROUTER, store, CFG)
    plan = routed.plan(["the sum of two"])  # code at 0.1 < gate 0.12
    assert plan.gated == ["code"] and plan.stack_ids == ["chat-r1", "math-r1", "math-r2"]
    torch.testing.assert_close(plan.weights, torch.tensor([[0.2, 0.0, 0.7]]))
    ids, att = _ids(tok, plan.prompts)
    with routed.routed(plan):
        got = store.model(input_ids=ids, attention_mask=att).logits
    assert sorted(read) == ["chat-r1.safetensors", "math-r1.safetensors", "math-r2.safetensors"]
    assert "code-r1" not in stack_ids(store.model) and store.stats.misses == 3
    with row_weights(reference, ["chat-r1", "math-r1", "math-r2"], torch.tensor([[0.2, 0.7, 0.7]])):
        torch.testing.assert_close(got, reference(input_ids=ids, attention_mask=att).logits, rtol=1e-4, atol=1e-4)

    # math stays attached from the last call (LRU); a chat-only call must skip it, never multiply it by 0
    for sid in ("math-r1", "math-r2"):
        for layer in stacked_layers(store.model).values():
            for part in ("lora_A", "lora_B", "router"):
                getattr(layer.frozen[sid], part).fill_(float("nan"))
    plan = routed.plan(["hello there"])
    assert plan.stack_ids == ["chat-r1"] and plan.gated == ["code", "math"]
    ids, att = _ids(tok, plan.prompts)
    banks = {n: (l.frozen.a.data_ptr(), l.frozen.b.data_ptr()) for n, l in stacked_layers(store.model).items()}
    with routed.routed(plan):
        got = store.model(input_ids=ids, attention_mask=att).logits
    assert torch.isfinite(got).all() and store.stats.hits == 1 and store.stats.misses == 3
    assert banks == {n: (l.frozen.a.data_ptr(), l.frozen.b.data_ptr())  # a hit rebuilds no buffer
                     for n, l in stacked_layers(store.model).items()}
    with only_stacks(reference, ["chat-r1"]):
        torch.testing.assert_close(got, reference(input_ids=ids, attention_mask=att).logits, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_routed_equals_row_weights_and_batched_equals_alone(base, files, reference, tok):
    store = _store(base, _entries(files))
    routed = RoutedModel(store.model, tok, ROUTER, store, CFG)
    prompts = ["def f(x): return x + 1", "hello", "two plus two sum of the primes"]
    plan = routed.plan(prompts)
    assert plan.stack_ids == ["chat-r1", "code-r1", "math-r1", "math-r2"]  # code is on in row 0 only
    expected_w = torch.tensor([[0.2, 0.9, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.2, 0.0, 0.7, 0.7]])
    torch.testing.assert_close(plan.stack_weights, expected_w)
    ids, att = _ids(tok, prompts)  # right-padded: every real position is unaffected by the padding
    with routed.routed(plan):
        batched = store.model(input_ids=ids, attention_mask=att).logits
    with row_weights(reference, plan.stack_ids, plan.stack_weights):
        torch.testing.assert_close(batched, reference(input_ids=ids, attention_mask=att).logits,
                                   rtol=1e-4, atol=1e-4)
    outs = set()
    for b, p in enumerate(prompts):
        one = routed.plan([p])
        i1, a1 = _ids(tok, [p])
        with routed.routed(one):
            alone = store.model(input_ids=i1, attention_mask=a1).logits[0]
        n = int(att[b].sum())
        torch.testing.assert_close(batched[b, :n], alone[:n], rtol=1e-4, atol=1e-4)
        outs.add(round(float(alone[-1].sum()), 3))
    with only_stacks(reference, ["chat-r1"]):  # the chat-only row is exactly "only the chat stacks"
        n = int(att[1].sum())
        torch.testing.assert_close(batched[1, :n], reference(input_ids=ids[1:2, :n]).logits[0],
                                   rtol=1e-4, atol=1e-4)
    assert len(outs) == 3  # the three routes really differ

    _, answers = routed.generate(prompts, max_new_tokens=6)  # one left-padded batch, rows routed differently
    alone = [routed.generate([p], max_new_tokens=6)[1][0] for p in prompts]
    assert answers == alone and len(set(alone)) > 1


@torch.no_grad()
def test_concurrent_routed_calls_give_the_serial_answers(base, files, tok):
    """Two threads routing differently (code vs math stacks) on ONE model: each gets what serial calls give."""
    import sys
    import threading

    store = _store(base, _entries(files))
    routed = RoutedModel(store.model, tok, ROUTER, store, CFG)
    prompts = {"code": "def f(x): return x + 1", "math": "two plus two sum of the primes"}
    serial = {k: routed.generate([p], max_new_tokens=8)[1][0] for k, p in prompts.items()}
    ids = {k: _ids(tok, [p]) for k, p in prompts.items()}
    plans = {k: routed.plan([p]) for k, p in prompts.items()}
    serial_logits = {}
    for k in prompts:
        with routed.routed(plans[k]):
            serial_logits[k] = store.model(input_ids=ids[k][0], attention_mask=ids[k][1]).logits
    assert serial["code"] != serial["math"]  # the two routes really answer differently
    got: dict[str, list] = {k: [] for k in prompts}
    errors, start = [], threading.Barrier(2)

    def worker(k: str) -> None:
        try:
            start.wait(10)
            for _ in range(6):
                got[k].append(routed.generate([prompts[k]], max_new_tokens=8)[1][0])
                with routed.routed(routed.plan([prompts[k]])):
                    logits = store.model(input_ids=ids[k][0], attention_mask=ids[k][1]).logits
                torch.testing.assert_close(logits, serial_logits[k], rtol=1e-5, atol=1e-5)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(f"{k}: {type(exc).__name__}: {exc}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible: any unguarded window shows
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert got == {k: [serial[k]] * 6 for k in prompts}


def test_plan_has_no_stacks_when_everything_is_gated():
    plan = plan_routes(["x"], torch.tensor([[0.05, 0.1, 0.11]]), ["code", "math", "law"], STACKS,
                       CFG)  # no chat domain: no floor
    assert plan.stack_ids == [] and plan.stack_weights.shape == (1, 0) and plan.gated == ["code", "math", "law"]


# ------------------------------------------------------------------ the CLI on a tiny trained run
def _trained_run(tmp_path: Path):
    """A tiny trained run (test_route_flow's profile) and a meta-router trained on its router split."""
    from test_route_flow import _profile

    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.evaluation.run import load_run
    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile
    from brainstacks_core.routing.oracle import router_pairs
    from brainstacks_core.routing.router_run import train_and_save_router
    from brainstacks_core.routing.run import routing_dir
    from brainstacks_core.training.run import train_profile

    cfg_path = _profile(tmp_path)
    profile = load_profile(cfg_path, artifact_root=tmp_path / "art")
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    train_profile(profile.training_setup, catalog=cat)
    run = load_run(profile.training_setup, "main", cat)
    domains = [d for d in profile.curriculum if run["domain_stacks"].get(d)]
    pairs = router_pairs(profile.context, profile.curriculum, cat)
    frame = pd.DataFrame({"record_id": pairs["record_id"], "source_domain": pairs["source_domain"],
                          "prompt": pairs["prompt"], "answer": pairs["response"]})
    for d in domains:  # planted targets: each prompt's own domain (what the oracle would find on clean data)
        frame[f"oracle_{d}"] = (frame["source_domain"] == d).astype(float)
        frame[f"target_{d}"] = frame[f"oracle_{d}"]
    lineage = {"oracle_version": "planted", "stack_versions": run["stack_versions"],
               "base_fingerprint": run["base_fingerprint"]}
    train_and_save_router(frame, domains, run["model"], run["tokenizer"], profile.router,
                          routing_dir(profile.context, "main") / "router", lineage, catalog=cat,
                          profile_name=profile.name, run_name="main")
    return cfg_path, profile, cat


@pytest.mark.slow
def test_cli_generate_prints_weights_stacks_answer_and_store(tmp_path, capsys):
    from brainstacks_core.routing.superposition import load_routed_run
    from flows.cli import main

    cfg_path, profile, cat = _trained_run(tmp_path)
    capsys.readouterr()
    prompt = "What is 3 plus 4?"
    argv = ["generate", "--config", str(cfg_path), "--artifact-root", str(tmp_path / "art"), "--prompt", prompt,
            "--max-new-tokens", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out

    routed = load_routed_run(profile.routing_setup, "main", cat)  # the same run, in process: what the CLI printed
    plan, answers = routed.generate([prompt], max_new_tokens=6)
    lines = out.splitlines()
    assert "routing weights (chat floor 0.20, gate 0.12):" in lines
    weights = next(ln for ln in lines if ln.startswith("  [0] "))
    for d, w in zip(plan.domains, plan.weights[0].tolist()):
        assert (f"{d} {w:.2f}" if w > 0 else f"{d} 0 (gated)") in weights
    used = next(ln for ln in lines if ln.startswith("stacks used: "))
    assert used.split(";")[0] == "stacks used: " + ", ".join(plan.stack_ids) and plan.stack_ids
    answer = next(ln for ln in lines if ln.startswith("answer: "))
    assert answer[len("answer: "):].strip() == answers[0]
    assert f"stacks attached: {', '.join(plan.stack_ids)}" in lines  # nothing else was loaded
    store = next(ln for ln in lines if ln.startswith("stack store: "))
    assert f"0 hits, {len(plan.stack_ids)} misses, 0 evictions" in store
    assert f"({len(plan.stack_ids)} verified by hash" in store

    assert main(argv[:-4] + ["--prompt", prompt, "--prompt", "Tell me about your day.", "--max-new-tokens",
                             "4"]) == 0  # a batch: one answer per prompt
    out = capsys.readouterr().out
    assert "  [1] " in out and "answer [0]: " in out and "answer [1]: " in out

    # a routed stack's file changed on disk: the CLI names the file and the repair command, no traceback
    target = next(e for e in routed.store.entries.values() if e.stack_id == plan.stack_ids[0]).path
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(target) in err and "brainstacks repair" in err and "Traceback" not in err

    # the run retrains one stack (a new version in its manifest) after the router trained: generate refuses
    # the stale router and names the command that fixes it
    from brainstacks_core.training.run import current_run_dir

    manifest_path = current_run_dir(profile.context, "main") / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["domains"]["math"]["rounds"][0]["version"] = "retrained-version"
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "trained on other stack versions" in err and "math-r1" in err and "brainstacks train-router" in err
