"""Continual training on a tiny base: zero forgetting in isolation, null space, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
from brainstacks_core.stacks.inject import inject_stacks, stacked_layers
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.training.boosting import DomainData
from brainstacks_core.training.config import TrainingConfig
from brainstacks_core.training.continual import RunContext, run_continual
from brainstacks_core.training.sft import SFTSettings


def _frames():
    add = [{"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}.", "system": None}
           for a in range(12) for b in range(12)]
    rev = [{"prompt": f"Reverse the word {w}.", "response": f"The reverse of {w} is {w[::-1]}.", "system": None}
           for w in ["apple", "banana", "cherry", "delta", "echo", "forest", "garden", "harbor", "island",
                     "jungle", "kernel", "lemon", "mango", "nectar", "orange", "pepper", "quartz", "river",
                     "stone", "tiger", "umbra", "violet", "walnut", "xenon", "yellow", "zebra"] * 4]
    out = []
    for name, rows in (("math", add), ("words", rev)):
        df = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
        out.append(DomainData(name, df.iloc[:-36], df.iloc[-36:-12], f"{name}-train-v1", f"{name}-val-v1",
                              df.iloc[-12:], f"{name}-test-v1"))
    return out


def _tokenizer(data):
    return train_tokenizer([f"{r.prompt} {r.response}" for d in data for r in d.train.itertuples()], 384)


@pytest.fixture(scope="module")
def tiny_setup():
    data = _frames()
    return data, _tokenizer(data)


def _model(tok, moe: MoELoRAConfig | None = None):
    model = build_tiny_llama(TinyBaseConfig(vocab_size=384, hidden_size=48, intermediate_size=96,
                                            num_hidden_layers=2, seed=0), tok)
    inject_stacks(model, moe or MoELoRAConfig(num_experts=4, rank=4, alpha=8))
    return model


CFG = TrainingConfig(max_rounds=2, min_loss_delta=0.002, null_space=True, eval_rows=24,
                     null_space_val_rows=24, sft=SFTSettings(max_steps=12, eval_steps=4, learning_rate=1e-2,
                                                            batch_size=8, warmup_steps=1, max_length=64))


def _layer_inputs(model, df, tok):
    """Each stacked layer's real-token inputs ``[N, in]`` on the rows of ``df``."""
    from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss

    xs = {n: [] for n in stacked_layers(model)}
    handles = [layer.register_forward_hook(lambda m, i, o, n=n: xs[n].append(i[0].reshape(-1, m.in_features)))
               for n, layer in stacked_layers(model).items()]
    masks = []
    with torch.no_grad():
        for b in iter_batches(tokenize_for_loss(tok, df, 64), 8, tok.pad_token_id or 0):
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            masks.append(b["attention_mask"].reshape(-1).bool())
    for h in handles:
        h.remove()
    mask = torch.cat(masks)
    return {n: torch.cat(x)[mask] for n, x in xs.items()}


def _share_along_math_directions(model, manifest, data, tok) -> float:
    """Largest share of the words stacks' output, on math inputs, that lies along math's directions V."""
    from brainstacks_core.stacks.null_space import compute_bases
    from brainstacks_core.training.continual import domain_stacks
    from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss

    math_ids, words_ids = domain_stacks(manifest, "math"), domain_stacks(manifest, "words")
    assert math_ids and words_ids
    batches = iter_batches(tokenize_for_loss(tok, data[0].val, 64), 8, tok.pad_token_id or 0)
    bases = compute_bases(model, [(math_ids, batches)], CFG.basis)  # V exactly as training computes it
    xs = _layer_inputs(model, data[0].val, tok)
    worst = 0.0
    for name, layer in stacked_layers(model).items():
        if bases[name].shape[0] == 0:
            continue
        for sid in words_ids:
            d = layer._frozen_delta(xs[name], (sid,))  # [N, out]
            if bases[name].shape[0] >= d.shape[1]:  # V spans the whole output: under projection the delta
                continue  # is ~0 there, and a share of ~0 / ~0 means nothing
            worst = max(worst, ((d @ bases[name].T).norm() / d.norm()).item())
    return worst


@pytest.mark.slow
def test_continual_as_trained_forgetting_and_manifest(tiny_setup, tmp_path):
    data, tok = tiny_setup
    model = _model(tok)
    ctx = RunContext("test", "main", tmp_path / "run", base_fingerprint="fp")
    manifest = run_continual(model, tok, data, CFG, MoELoRAConfig(num_experts=4, rank=4, alpha=8), ctx)
    on_disk = json.loads(ctx.manifest_path.read_text())
    assert on_disk["domains"]["math"]["status"] == on_disk["domains"]["words"]["status"] == "done"
    frozen = [r for d in manifest["domains"].values() for r in d["rounds"] if r["status"] == "frozen"]
    assert frozen and all(r["loss_after"] < r["loss_before"] for r in frozen)
    f = {(r["after"], r["domain"]): r for r in manifest["forgetting"]}
    assert {r["split"] for r in manifest["forgetting"]} == {"test"}  # reported on the held-out split
    for (after, dom), r in f.items():  # as trained == the loss the domain ended training with
        last = [x for x in manifest["domains"][dom]["rounds"] if x["status"] == "frozen"][-1]
        assert abs(r["as_trained_val"] - last["loss_after"]) <= 1e-6 * last["loss_after"], (after, dom)
    assert f[("words", "math")]["as_trained"] == f[("words", "math")]["isolated"]  # math trained first
    assert f[("math", "math")]["as_trained"] == f[("words", "math")]["as_trained"]
    assert f[("math", "math")]["isolated"] < f[("math", "math")]["base"]
    ns = manifest["domains"]["words"]["null_space"]
    assert sum(ns["directions"].values()) > 0
    # the words stacks write (almost) nothing along math's directions on math's own inputs
    assert _share_along_math_directions(model, manifest, data, tok) < 1e-3


@pytest.mark.slow
def test_without_projection_new_stacks_write_along_earlier_directions(tiny_setup, tmp_path):
    data, tok = tiny_setup
    model = _model(tok)
    cfg = CFG.model_copy(update={"null_space": False})
    ctx = RunContext("test", "no-ns", tmp_path / "run", base_fingerprint="fp")
    manifest = run_continual(model, tok, data, cfg, MoELoRAConfig(num_experts=4, rank=4, alpha=8), ctx)
    assert "null_space" not in manifest["domains"]["words"]
    assert _share_along_math_directions(model, manifest, data, tok) > 0.05


@pytest.mark.slow
def test_kill_9_mid_run_resumes_without_retraining(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    worker = [sys.executable, str(Path(__file__).parent / "continual_worker.py"), str(run_dir)]
    proc = subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest_path = run_dir / "manifest.json"
    deadline = time.time() + 400
    first = None
    while time.time() < deadline and proc.poll() is None:
        if manifest_path.exists():
            m = json.loads(manifest_path.read_text())
            rounds = [r for d in m["domains"].values() for r in d["rounds"]]
            if rounds:
                first = rounds[0]
                break
        time.sleep(0.2)
    assert first is not None, "worker never finished a round"
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: the next round (or the forgetting pass) is in progress
    proc.wait()
    killed = json.loads(manifest_path.read_text())
    frozen_before = {r["file"]: (r["file_sha256"], os.path.getmtime(r["file"]))
                     for d in killed["domains"].values() for r in d["rounds"] if r["status"] == "frozen"}
    done = subprocess.run(worker, capture_output=True, text=True, timeout=600)
    assert "WORKER DONE" in done.stdout, done.stderr[-2000:]
    final = json.loads(manifest_path.read_text())
    assert all(final["domains"][d]["status"] == "done" for d in ("math", "words"))
    from brainstacks_core.files import sha256_file

    for path, (sha, mtime) in frozen_before.items():
        assert sha256_file(path) == sha and os.path.getmtime(path) == mtime, f"{path} was rewritten"
    for d in final["domains"].values():
        rounds = [r["round"] for r in d["rounds"]]
        assert rounds == list(range(1, len(rounds) + 1)), "a round was retrained or skipped"
    old = killed["domains"]["math"]["rounds"]
    assert final["domains"]["math"]["rounds"][:len(old)] == old


def test_manifest_refuses_changed_settings(tmp_path):
    from brainstacks_core.files import atomic_write_json
    from brainstacks_core.training.continual import _read_manifest

    ctx = RunContext("test", "main", tmp_path, base_fingerprint="fp")
    atomic_write_json(ctx.manifest_path, {"base_fingerprint": "fp", "config_hash": "h1", "domains_order": ["a", "b"],
                                          "domains": {"a": {"rounds": []}}, "forgetting": []})
    assert _read_manifest(ctx, "h1", ["a", "b", "c"])["domains_order"] == ["a", "b", "c"]
    assert _read_manifest(ctx, "h1", ["a"])["domains_order"] == ["a", "b"]  # train_domain on a prefix
    with pytest.raises(ValueError, match="config_hash"):
        _read_manifest(ctx, "h2", ["a", "b"])
    with pytest.raises(ValueError, match="must agree"):
        _read_manifest(ctx, "h1", ["b", "a"])


@pytest.mark.slow
def test_round_loss_is_measured_on_the_frozen_bf16_stack(tiny_setup, tmp_path):
    data, tok = tiny_setup
    moe = MoELoRAConfig(num_experts=4, rank=4, alpha=8, frozen_dtype="bfloat16")
    cfg = TrainingConfig(max_rounds=1, eval_rows=24, null_space=False,
                         sft=SFTSettings(max_steps=6, eval_steps=3, learning_rate=1e-2, batch_size=8,
                                         warmup_steps=0, max_length=64))
    model = _model(tok, moe)
    manifest = run_continual(model, tok, data[:1], cfg, moe, RunContext("t", "bf16", tmp_path, "fp"))
    rec = manifest["domains"]["math"]["rounds"][0]
    (row,) = [r for r in manifest["forgetting"] if r["domain"] == "math"]
    assert rec["status"] == "frozen"
    assert rec["loss_after"] == row["as_trained_val"]  # the recorded loss is the stored (bf16) stack's loss
    layer = next(iter(stacked_layers(model).values()))
    assert layer.frozen["math-r1"].lora_B.dtype == torch.bfloat16


@pytest.mark.slow
def test_round_without_improvement_is_discarded(tiny_setup, tmp_path):
    data, tok = tiny_setup
    cfg = TrainingConfig(max_rounds=1, eval_rows=24, null_space=False,
                         sft=SFTSettings(max_steps=4, eval_steps=2, learning_rate=0.0, batch_size=8,
                                         warmup_steps=0, max_length=64))
    ctx = RunContext("test", "noimp", tmp_path / "run", base_fingerprint="fp")
    model = _model(tok)
    manifest = run_continual(model, tok, data[:1], cfg, MoELoRAConfig(num_experts=4, rank=4, alpha=8), ctx)
    rec = manifest["domains"]["math"]["rounds"][0]
    assert rec["status"] == "discarded" and "no improvement" in rec["reason"] and rec["file"] is None
    assert all(not layer.frozen and layer.active is None for layer in stacked_layers(model).values())
