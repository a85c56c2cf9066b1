"""Meta-router (issue 10, item 3): features, network, training on planted targets, save/load, inference gates."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from brainstacks_core.evaluation.routing import Router, stack_weights
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.features import all_features, prompt_features
from brainstacks_core.routing.metrics import auroc, f1, gain_recovered
from brainstacks_core.routing.router import (
    MetaRouter,
    TrainedRouter,
    floor_and_gate,
    load_trained_router,
    record_router,
    router_uri,
    save_router,
)
from brainstacks_core.routing.train_router import evaluate_weights, fit_router, split_by_prompt
from brainstacks_core.stacks.inject import (
    add_active_stack,
    freeze_active_stack,
    inject_stacks,
    row_weights,
    stacked_layers,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig

DOMAINS = ["chat", "code", "math"]
WORDS = {"chat": ["hello", "friend", "letter", "story", "thanks"],
         "code": ["python", "function", "loop", "class", "compile"],
         "math": ["equation", "integral", "prime", "matrix", "angle"]}
FILLER = ["the", "a", "of", "and", "to", "is", "what", "how", "my", "in", "on", "with"]
CFG = RouterConfig(hidden=64, heads=4, dropout=0.0, epochs=25, lr=3e-3, batch_size=32, max_length=24,
                   val_fraction=0.25, feature_batch_size=64, seed=0)


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Prompts with planted oracle targets that disagree with their labels.

    Oracle rule: chat on iff "please" occurs, code on iff the source is code, math on
    (soft-boosted 0.5 for "count") iff "sum" or "count" occurs, whatever the source.
    Every fourth prompt appears twice (two answers), so rows share prompts.
    """
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        src = DOMAINS[i % 3]
        words = rnd.sample(WORDS[src], 3) + rnd.sample(FILLER, 4)
        please, summ = rnd.random() < 0.5, rnd.random() < 0.4
        if please:
            words.append("please")
        if summ:
            words.append(rnd.choice(["sum", "count"]))
        rnd.shuffle(words)
        prompt = " ".join(words) + f" {i}"
        oracle = {"chat": float(please), "code": float(src == "code"),
                  "math": (0.5 if "count" in words else 1.0) if summ else 0.0}
        for k in range(2 if i % 4 == 0 else 1):
            row = {"record_id": f"r{i}-{k}", "source_domain": src, "prompt": prompt, "answer": f"ok {k} {src}"}
            for d in DOMAINS:
                row[f"oracle_{d}"] = oracle[d]
                row[f"target_{d}"] = 0.8 * oracle[d] + 0.2 * float(src == d)
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tok():
    from brainstacks_core.base.tiny_base import train_tokenizer

    texts = [" ".join(w) for w in WORDS.values()] + [" ".join(FILLER), "please sum count ok 0123456789"]
    return train_tokenizer(texts * 20, vocab_size=400)


@pytest.fixture(scope="module")
def base(tok):
    from conftest import build_tiny_llama

    return build_tiny_llama(seed=0, hidden=32, layers=2, vocab=len(tok) + 8)


def _with_stacks(model):
    """A copy of ``model`` with one random frozen stack per domain (ids = domain names)."""
    model = copy.deepcopy(model)
    inject_stacks(model, MoELoRAConfig(num_experts=2, rank=4, alpha=8))
    g = torch.Generator().manual_seed(3)
    for i, d in enumerate(DOMAINS):
        add_active_stack(model, d, seed=i)
        with torch.no_grad():
            for layer in stacked_layers(model).values():
                layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 0.3)
        freeze_active_stack(model)
    return model.eval()


def _loss_under(model, tok):
    """Per-row mean token loss of prompt + answer under per-row domain weights (one stack per domain)."""

    @torch.no_grad()
    def loss_under(rows: pd.DataFrame, weights: torch.Tensor) -> torch.Tensor:
        texts = [f"{p} {a}" for p, a in zip(rows["prompt"], rows["answer"])]
        enc = tok(texts, return_tensors="pt", padding=True)
        ids, att = enc["input_ids"], enc["attention_mask"]
        with row_weights(model, DOMAINS, weights):
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        m = att[:, 1:].float()
        return (nll * m).sum(1) / m.sum(1)

    return loss_under


def _with_losses(frame, loss_under):
    frame = frame.copy()
    oracle = torch.tensor(frame[[f"oracle_{d}" for d in DOMAINS]].to_numpy(np.float32))
    frame["base_loss"] = loss_under(frame, torch.zeros_like(oracle)).numpy()
    frame["oracle_loss"] = loss_under(frame, oracle).numpy()
    return frame


def test_shapes_and_independent_sigmoids():
    net = MetaRouter(32, 4, CFG).eval()
    f, m = torch.randn(3, 7, 32), torch.ones(3, 7, dtype=torch.bool)
    m[1, 4:] = False
    p = net(f, m)
    assert p.shape == (3, 4) and bool(((p > 0) & (p < 1)).all())
    assert not torch.allclose(p.sum(1), torch.ones(3))  # not a softmax
    with torch.no_grad():  # moving one domain's head moves only that column
        net.head_bias[2] += 3.0
    q = net(f, m)
    torch.testing.assert_close(q[:, [0, 1, 3]], p[:, [0, 1, 3]], rtol=0, atol=0)
    assert bool((q[:, 2] > p[:, 2]).all())
    f2 = f.clone()  # padded positions are ignored
    f2[1, 4:] = 100.0
    torch.testing.assert_close(net(f2, m)[1], q[1])


def test_features_use_no_stacks(base, tok):
    prompts = ["hello friend please", "python loop sum of the prime"]
    f0, m0 = prompt_features(base, tok, prompts, CFG)
    stacked = _with_stacks(base)
    add_active_stack(stacked, "act", seed=9)  # an active stack too, and row weights set by someone else
    with torch.no_grad():
        ids = tok(prompts, return_tensors="pt", padding=True)["input_ids"]
        plain = base(ids).logits
        assert not torch.allclose(stacked(ids).logits, plain, atol=1e-4)  # the stacks do change the model
    with row_weights(stacked, DOMAINS, torch.ones(2, 3)):
        f1_, m1 = prompt_features(stacked, tok, prompts, CFG)
        with torch.no_grad():
            assert not torch.allclose(stacked(ids).logits, plain, atol=1e-4)  # caller's row weights restored
    torch.testing.assert_close(f1_, f0, rtol=1e-6, atol=1e-6)
    assert torch.equal(m1, m0) and f0.shape[:2] == m0.shape and f0.shape[2] == 32
    assert bool((f0[~m0] == 0).all())


def test_one_max_length_truncates(base, tok):
    long = " ".join(["python function loop"] * 40)
    f, m = all_features(base, tok, [long, "hi"], CFG, progress=False)
    assert f.shape[1] == CFG.max_length and int(m[0].sum()) == CFG.max_length and int(m[1].sum()) < 5


def test_split_by_unique_prompt_no_leak():
    frame = _frame(80)
    tr, va = split_by_prompt(frame, 0.25, seed=1)
    assert len(set(tr) | set(va)) == len(frame) and not set(tr) & set(va)
    assert not set(frame.prompt.iloc[tr]) & set(frame.prompt.iloc[va])
    assert frame.prompt.duplicated().any()  # the frame does repeat prompts
    assert abs(frame.prompt.iloc[va].nunique() - 0.25 * frame.prompt.nunique()) <= 1
    tr2, va2 = split_by_prompt(frame, 0.25, seed=1)
    assert np.array_equal(va, va2)


def test_confidence_margin_term():
    from brainstacks_core.routing.train_router import router_loss

    targets = torch.tensor([[1.0, 0.0, 0.6]])
    bce = CFG.model_copy(update={"margin_weight": 0.0})
    unsure = torch.zeros(1, 3)  # p = 0.5 everywhere
    assert float(router_loss(unsure, targets, CFG)) == pytest.approx(
        float(router_loss(unsure, targets, bce)) + CFG.margin_weight * CFG.confidence_margin)
    sure = torch.tensor([[4.0, -4.0, 0.0]])  # clear targets past the margin, the soft one left to BCE
    assert float(router_loss(sure, targets, CFG)) == pytest.approx(float(router_loss(sure, targets, bce)))


def test_metrics_against_naive_reference():
    g = torch.Generator().manual_seed(0)
    s, y = torch.rand(50, generator=g).round(decimals=1), torch.rand(50, generator=g) > 0.6  # ties included
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[y] for b in s[~y]]
    assert math.isclose(auroc(s, y), sum(pairs) / len(pairs), rel_tol=1e-12)
    assert math.isnan(auroc(s, torch.ones(50, dtype=torch.bool)))
    p = s > 0.5
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    assert math.isclose(f1(p, y), 2 * tp / (2 * tp + fp + fn))
    assert gain_recovered(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.5, 2.0])) == 0.5


def test_oracle_weights_recover_all_of_the_gain(base, tok):
    model = _with_stacks(base)
    lu = _loss_under(model, tok)
    frame = _with_losses(_frame(30), lu)
    cfg = CFG.model_copy(update={"chat_floor": 0.0})
    oracle = torch.tensor(frame[[f"oracle_{d}" for d in DOMAINS]].to_numpy(np.float32))
    out = evaluate_weights(frame, oracle, DOMAINS, cfg, lu)
    assert math.isclose(out["gain_recovered"], 1.0, rel_tol=1e-9) and out["mean_auroc"] == 1.0
    assert math.isclose(evaluate_weights(frame, torch.zeros_like(oracle), DOMAINS, cfg, lu)["gain_recovered"],
                        0.0, abs_tol=1e-9)


def test_router_learns_planted_targets_and_beats_label_router(base, tok, tmp_path):
    model = _with_stacks(base)
    lu = _loss_under(model, tok)
    frame = _with_losses(_frame(240), lu)
    seen = []
    fit = fit_router(frame, DOMAINS, model, tok, CFG, loss_under=lu, progress_cb=seen.append, progress=False)
    r, lab, probe = fit.report["router"], fit.report["label"], fit.report["probe"]
    assert len(seen) == CFG.epochs and seen == fit.report["history"]
    scores = [h["score"] for h in seen]  # best checkpoint = best composite score; cosine LR ends at 0
    assert fit.report["best_epoch"] == 1 + scores.index(max(scores))
    assert seen[0]["lr"] < CFG.lr and seen[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert seen[0]["score_auroc_f1"] == pytest.approx(seen[0]["mean_auroc"] + seen[0]["mean_f1"] - seen[0]["val_bce"])
    assert seen[0]["score"] == seen[0]["score_paper"]  # checkpoint_score: paper by default (paper 3.6)
    assert r["mean_auroc"] > 0.95, r
    assert r["mean_auroc"] > probe["mean_auroc"]
    assert r["mean_auroc"] >= lab["mean_auroc"] and r["mean_f1"] >= lab["mean_f1"]
    assert r["auroc"]["math"] > lab["auroc"]["math"] + 0.2  # math follows keywords, not labels
    assert {"gain_recovered", "routed_loss"} <= set(r) and math.isfinite(probe["mean_auroc"])
    assert not set(frame.prompt.iloc[fit.train_idx]) & set(frame.prompt.iloc[fit.val_idx])

    # save / load round trip: bitwise-equal outputs, recorded with its lineage
    lineage = {"oracle_version": "oracle-abc", "stack_versions": {d: f"stack-{d}" for d in DOMAINS},
               "base_fingerprint": "base-123"}
    meta = save_router(tmp_path / "router", fit.net, DOMAINS, CFG, lineage, metrics={"auroc": r["mean_auroc"]})
    live = TrainedRouter(fit.net, model, tok, DOMAINS, CFG, meta["version"])
    loaded = load_trained_router(tmp_path / "router", model, tok)
    prompts = list(frame.prompt.iloc[fit.val_idx[:9]])
    assert torch.equal(loaded.probabilities(prompts), live.probabilities(prompts))
    assert isinstance(loaded, Router) and loaded.version == meta["version"] and loaded.domains == DOMAINS
    with pytest.raises(ValueError, match="max_length"):  # one max length for training and inference
        load_trained_router(tmp_path / "router", model, tok, CFG.model_copy(update={"max_length": 96}))
    cat = Catalog(tmp_path / "catalog.duckdb")
    for uri, v in [("oracle://demo/main", "oracle-abc"), ("stack://demo/math/0", "stack-math"),
                   ("base://demo", "base-123")]:  # the upstream artifacts, as the pipeline records them
        cat.record_artifact(uri=uri, version=v, kind=uri.split(":")[0], path=None, sha256=None, code_version="t",
                            config_hash=None)
    record_router(cat, tmp_path / "router", meta, "demo", "main")
    row = cat.latest(router_uri("demo", "main"))
    assert row["version"] == meta["version"] and row["kind"] == "router"
    assert {a["version"] for a in cat.upstream(meta["version"])} >= {"oracle-abc", "stack-math", "base-123"}
    (tmp_path / "router" / "router.safetensors").write_bytes(b"x" + (tmp_path / "router" /
                                                                     "router.safetensors").read_bytes()[1:])
    with pytest.raises(ValueError, match="sha256"):
        load_trained_router(tmp_path / "router", model, tok)


def test_chat_floor_and_gate_at_inference(base, tok):
    cfg = CFG.model_copy(update={"chat_floor": 0.2, "gate_threshold": 0.12})
    raw = torch.tensor([[0.05, 0.11, 0.12], [0.9, 0.5, 0.01]])
    w = floor_and_gate(raw, DOMAINS, cfg)
    assert torch.equal(w, torch.tensor([[0.2, 0.0, 0.12], [0.9, 0.5, 0.0]]))
    torch.manual_seed(0)
    net = MetaRouter(32, 3, cfg).eval()
    with torch.no_grad():  # code far below the gate, math at ~0.5, chat ~0: floor lifts it
        net.head_weight.zero_()
        net.head_bias.copy_(torch.tensor([-8.0, -8.0, 0.0]))
    router = TrainedRouter(net, base, tok, DOMAINS, cfg, "router-test")
    prompts = ["hello please", "python loop"]
    w = router.domain_weights(prompts)
    assert torch.equal(w[:, 0], torch.full((2,), 0.2)) and bool((w[:, 1] == 0).all())
    assert torch.allclose(w[:, 2], torch.full((2,), 0.5))
    sw = stack_weights(router, {"chat": ["c0"], "code": ["k0", "k1"], "math": ["m0"]}, prompts)
    assert sw[0] == {"c0": 0.2, "k0": 0.0, "k1": 0.0, "m0": 0.5}
    no_chat = TrainedRouter(MetaRouter(32, 2, cfg), base, tok, ["code", "math"], cfg, "r2")
    with torch.no_grad():
        no_chat.net.head_weight.zero_()
        no_chat.net.head_bias.fill_(-8.0)
    assert bool((no_chat.domain_weights(prompts) == 0).all())  # no chat domain: no floor, all gated


def test_routing_heatmap_png(tmp_path):
    from brainstacks_core.reporting.routing_plots import plot_routing_heatmap, routing_matrix

    src = ["chat", "math", "math", "code"]
    w = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.0, 1.0], [0.4, 0.0, 0.5], [0.2, 1.0, 0.0]])
    rows, vals, counts = routing_matrix(src, w, DOMAINS)
    assert rows == DOMAINS and counts == [1, 1, 2]
    assert vals[2] == pytest.approx([0.3, 0.0, 0.75])
    path = plot_routing_heatmap(src, w, DOMAINS, tmp_path / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_and_save_router_is_idempotent(base, tok, tmp_path):
    from brainstacks_core.routing.router_run import train_and_save_router

    model = _with_stacks(base)
    lu = _loss_under(model, tok)
    frame = _with_losses(_frame(60), lu)
    cfg = CFG.model_copy(update={"epochs": 3})
    lineage = {"oracle_version": "oracle-1", "stack_versions": {d: f"s-{d}" for d in DOMAINS},
               "base_fingerprint": "b-1"}
    cat = Catalog(tmp_path / "catalog.duckdb")
    first = train_and_save_router(frame, DOMAINS, model, tok, cfg, tmp_path / "routers", lineage, catalog=cat,
                                  profile_name="demo", run_name="main", loss_under=lu)
    assert not first["reused"] and first["report"]["history"][-1]["epoch"] == 3
    assert (tmp_path / "routers").is_dir() and first["heatmap"].endswith(".png")
    assert set(first["summary"]) == {"router", "label", "probe"}
    again = train_and_save_router(frame, DOMAINS, model, tok, cfg, tmp_path / "routers", lineage, catalog=cat,
                                  profile_name="demo", run_name="main", loss_under=lu)
    assert again["reused"] and again["version"] == first["version"]
    prompts = list(frame.prompt[:4])
    assert torch.equal(again["router"].domain_weights(prompts), first["router"].domain_weights(prompts))
    other = train_and_save_router(frame, DOMAINS, model, tok, cfg, tmp_path / "routers",
                                  {**lineage, "oracle_version": "oracle-2"})  # new oracle rows: a new router
    assert not other["reused"] and other["folder"] != first["folder"]
    assert cat.latest("router://demo/main")["version"] == first["version"]
