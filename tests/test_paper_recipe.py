"""The paper's recipes as switches (issue 22.1): keep rule, per-domain overrides, packing, null-space rows and
combination, router feature mix, checkpoint score, cross-domain pairs, and the paper profiles' numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_continual import _frames, _model, _tokenizer
from test_null_space import _batches, _model_with_domains

from brainstacks_core.profile import load_profile
from brainstacks_core.routing.baselines import label_weights
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.cross_pairs import cross_domain_rows
from brainstacks_core.routing.metrics import paper_score, set_metrics
from brainstacks_core.stacks.config import NullSpaceConfig
from brainstacks_core.stacks.inject import only_stacks, stacked_layers
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.null_space import collect_frozen_deltas, compute_bases, top_directions
from brainstacks_core.training.config import DomainOverride, TrainingConfig
from brainstacks_core.training.continual import RunContext, run_continual
from brainstacks_core.training.sft import SFTSettings

ROOT = Path(__file__).resolve().parents[1]
MOE = MoELoRAConfig(num_experts=4, rank=4, alpha=8)


@pytest.fixture(scope="module")
def tiny():
    data = _frames()
    return data, _tokenizer(data)


# ---------------------------------------------------------------- keep rule and per-domain overrides

def _still_cfg(keep_rule: str) -> TrainingConfig:
    """A round that cannot improve (learning rate 0): the two keep rules disagree on it."""
    return TrainingConfig(max_rounds=2, eval_rows=8, null_space=False, keep_rule=keep_rule,
                          sft=SFTSettings(max_steps=2, eval_steps=10, learning_rate=0.0, batch_size=8,
                                          warmup_steps=0, max_length=64))


@pytest.mark.parametrize("keep_rule", ["improving", "paper"])
def test_keep_rule_on_a_round_without_improvement(tiny, tmp_path, keep_rule):
    data, tok = tiny
    model = _model(tok)
    manifest = run_continual(model, tok, data[:1], _still_cfg(keep_rule), MOE,
                             RunContext("t", keep_rule, tmp_path / keep_rule, "fp"))
    entry = manifest["domains"]["math"]
    (rec,) = entry["rounds"]  # one round either way: no gain ends the domain
    assert rec["loss_after"] >= rec["loss_before"] - 1e-9
    if keep_rule == "improving":  # today's rule: discarded, never written
        assert rec["status"] == "discarded" and rec["file"] is None and entry["stop_reason"] == "round discarded"
        assert all(not layer.frozen for layer in stacked_layers(model).values())
    else:  # Algorithm 1: frozen and written anyway, then the gain < min_loss_delta stops the domain
        assert rec["status"] == "frozen" and Path(rec["file"]).exists() and "keep_rule paper" in rec["reason"]
        assert entry["stop_reason"].startswith("gain") and "< min_loss_delta" in entry["stop_reason"]
        assert all("math-r1" in layer.frozen for layer in stacked_layers(model).values())


def test_per_domain_overrides_reach_the_trainer(tiny, tmp_path):
    data, tok = tiny
    cfg = TrainingConfig(max_rounds=2, min_loss_delta=0.0, eval_rows=8, null_space=False,
                         per_domain={"words": DomainOverride(max_steps=3, max_rounds=1, learning_rate=5e-3)},
                         sft=SFTSettings(max_steps=2, eval_steps=4, learning_rate=1e-2, batch_size=8,  # logs at 2
                                         warmup_steps=0, max_length=64, lr_scheduler="constant"))
    seen: list[dict] = []
    manifest = run_continual(_model(tok), tok, data, cfg, MOE, RunContext("t", "pd", tmp_path, "fp",
                                                                          progress=seen.append))
    steps = {d: {s["max_steps"] for s in seen if s["domain"] == d and s.get("stage") == "train" and s["step"]}
             for d in ("math", "words")}
    assert steps == {"math": {2}, "words": {3}}, steps  # the trainer's own max_steps
    lrs = {d: {h["learning_rate"] for r in manifest["domains"][d]["rounds"] for h in r["train_log"]
               if "learning_rate" in h} for d in ("math", "words")}
    assert lrs == {"math": {1e-2}, "words": {5e-3}}, lrs
    assert len(manifest["domains"]["words"]["rounds"]) == 1 and "max_rounds 1" in \
        manifest["domains"]["words"]["stop_reason"]
    assert len(manifest["domains"]["math"]["rounds"]) == 2  # the run's own max_rounds


def test_unknown_per_domain_names_are_refused_naming_the_key(tmp_path):
    import yaml

    from brainstacks_core.profile import ProfileError

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["training"]["per_domain"] = {"maths": {"max_steps": 3}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match=r"training\.per_domain\.maths: domain 'maths' is not a data domain"):
        load_profile(tmp_path / "configs" / "x.yaml")


# ---------------------------------------------------------------- packing

def test_packing_packs_the_training_rows_and_never_the_evaluation(tiny, tmp_path):
    from brainstacks_core.stacks.inject import add_active_stack
    from brainstacks_core.training.sft import StackSFTTrainer, make_sft_config
    from brainstacks_core.training.sft_data import to_sft_dataset

    data, tok = tiny
    rows = data[0].train.head(64)
    built = {}
    for packing in (False, True):
        model = _model(tok)
        add_active_stack(model, "math-r1", seed=0)
        s = SFTSettings(max_steps=1, eval_steps=1, batch_size=8, warmup_steps=0, max_length=64, packing=packing)
        args = make_sft_config(s, tmp_path / str(packing))
        assert args.packing is packing and args.eval_packing is False
        trainer = StackSFTTrainer(model=model, args=args, train_dataset=to_sft_dataset(rows),
                                  eval_dataset=to_sft_dataset(rows.head(8)), processing_class=tok,
                                  aux_loss_coef=0.01, eval_loss=lambda m: 0.0)
        trainer.train()
        built[packing] = (len(trainer.train_dataset), len(trainer.eval_dataset))
    assert built[False] == (64, 8)
    assert built[True][0] < 64 and built[True][1] == 8  # ~20-token rows packed into 64-token blocks


# ---------------------------------------------------------------- null space: rows and combination

def test_per_sample_rows_are_each_samples_mean_delta():
    model, _ = _model_with_domains(1)
    batches = _batches(3)  # 3 batches x 4 samples, 3..12 real tokens each
    tokens = collect_frozen_deltas(model, batches, max_rows=10_000, rows="per_token")
    samples = collect_frozen_deltas(model, batches, max_rows=10_000, rows="per_sample")
    n_real = sum(int(b["attention_mask"].sum()) for b in batches)
    layers = stacked_layers(model)
    for name, layer in layers.items():
        assert tokens[name].shape[0] == n_real and samples[name].shape[0] == 12
    # by hand: each sample's own forward, the mean of its real positions' deltas
    name, layer = next(iter(layers.items()))
    want, seen = [], []
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(m._frozen_delta(
        i[0].reshape(-1, m.in_features), m.active_frozen_ids())))
    with torch.no_grad():
        for b in batches:
            for j in range(4):
                n = int(b["attention_mask"][j].sum())
                seen.clear()
                model(input_ids=b["input_ids"][j:j + 1, :n], attention_mask=b["attention_mask"][j:j + 1, :n])
                want.append(seen[0].mean(0))
    hook.remove()
    key = lambda x: x[torch.argsort(x[:, 0])]  # noqa: E731 - the reservoir keeps rows in its own order
    torch.testing.assert_close(key(samples[name]), key(torch.stack(want)), atol=1e-5, rtol=1e-4)


def test_joint_combination_is_one_svd_over_every_earlier_domain():
    model, ids = _model_with_domains(2)
    groups = lambda: [(ids[0], _batches(4, seed=2)), (ids[1], _batches(4, seed=3))]  # noqa: E731
    joint = compute_bases(model, groups(), NullSpaceConfig(k=3, combine="joint", rows="per_sample"))
    per_domain = compute_bases(model, groups(), NullSpaceConfig(k=3, combine="per_domain", rows="per_sample"))
    with only_stacks(model, ids[0] + ids[1]):  # by hand: both domains' samples, all their stacks on, one SVD
        rows = collect_frozen_deltas(model, _batches(4, seed=2) + _batches(4, seed=3), 10_000, rows="per_sample")
    for name, v in joint.items():
        assert v.shape[0] == 3 and per_domain[name].shape[0] == 6, name  # k in total vs k per domain
        want = top_directions(rows[name], NullSpaceConfig(k=3))
        torch.testing.assert_close(v.T @ v, want.T @ want, atol=1e-4, rtol=0)  # the same subspace


# ---------------------------------------------------------------- router: feature mix, checkpoint score, pairs

def test_feature_mix_defaults_to_the_papers_045_mid_055_last():
    from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
    from brainstacks_core.routing.features import prompt_features

    assert RouterConfig().feature_mix == 0.45
    prompts = ["What is 7 times 6?", "Name a yellow fruit."]
    tok = train_tokenizer(prompts * 4, 300)
    model = build_tiny_llama(TinyBaseConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=4), tok)
    feats, mask = prompt_features(model, tok, prompts, RouterConfig(max_length=32))
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    want = (0.45 * hs[2] + 0.55 * hs[4]) * enc["attention_mask"].bool().unsqueeze(-1)
    torch.testing.assert_close(feats, want)


def test_paper_checkpoint_score_by_hand():
    # oracle sets: {a}, {b}, {a, b}, {a, c}, {} ; predictions (threshold 0.5)
    oracle = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0.5], [0, 0, 0]], dtype=torch.float32)
    pred = torch.tensor([[.9, .2, .1], [.6, .4, .1], [.8, .7, .2], [.9, .1, .3], [.1, .1, .1]])
    m = set_metrics(pred, oracle, 0.5)
    # single rows 0, 1: top-1 a (right), a (wrong: b) -> 1/2; mixed rows 2, 3: {a,b} right, {a} != {a,c} -> 1/2
    assert (m["single_top1"], m["mixed_set_match"], m["n_single"], m["n_mixed"]) == (0.5, 0.5, 2, 2)
    assert paper_score(m, 0.4) == pytest.approx(0.50 * 0.5 + 0.35 * 0.5 - 0.15 * 0.4)
    none_mixed = set_metrics(pred[:2], oracle[:2], 0.5)
    assert math.isnan(none_mixed["mixed_set_match"])
    assert paper_score(none_mixed, 0.4) == pytest.approx(0.50 * 0.5 - 0.15 * 0.4)


@pytest.mark.parametrize("rule", ["paper", "auroc_f1"])
def test_checkpoint_score_picks_the_epoch(rule):
    from brainstacks_core.routing.train_router import train_meta_router

    g = torch.Generator().manual_seed(0)
    n, d = 48, 3
    oracle = (torch.rand(n, d, generator=g) > 0.6).float()
    feats = torch.randn(n, 6, 16, generator=g) + oracle.repeat_interleave(6, 1)[:, :16].unsqueeze(1) * 0.5
    mask = torch.ones(n, 6, dtype=torch.bool)
    cfg = RouterConfig(hidden=16, heads=2, epochs=4, lr=3e-3, checkpoint_score=rule)
    res = train_meta_router(feats, mask, oracle, oracle, np.arange(36), np.arange(36, 48), ["a", "b", "c"], cfg,
                            progress=False)
    key = {"paper": "score_paper", "auroc_f1": "score_auroc_f1"}[rule]
    best = max(res.history, key=lambda h: h[key])
    assert res.best_score == best[key] and res.best_epoch == best["epoch"]
    for h in res.history:
        assert h["score"] == h[key]
        if rule == "paper":
            assert h[key] == pytest.approx(paper_score(h, h["val_bce"]))


def test_cross_domain_pairs_join_two_domains_prompts_and_label_both():
    pairs = pd.DataFrame([{"record_id": f"{dom}{i}", "source_domain": dom, "prompt": f"{dom} q{i}",
                           "response": f"{dom} a{i}", "system": None} for dom in ("chat", "math", "reasoning")
                          for i in range(5)])
    cross = cross_domain_rows(pairs, [("chat", "reasoning"), ("reasoning", "math"), ("reasoning", "code")], 3,
                              seed=0, domains=["chat", "math", "reasoning"])
    assert list(cross["source_domain"]) == ["chat+reasoning"] * 3 + ["reasoning+math"] * 3  # code: no stacks
    for r in cross.itertuples():
        a, b = r.source_domain.split("+")
        left, right = r.prompt.split("\n\n")
        assert left.startswith(f"{a} q") and right.startswith(f"{b} q")
        assert r.response == f"{a} a{left[len(a) + 2:]}\n\n{b} a{right[len(b) + 2:]}"  # the same rows' answers
    assert cross["record_id"].is_unique and cross.equals(
        cross_domain_rows(pairs, [("chat", "reasoning"), ("reasoning", "math")], 3, seed=0))
    w = label_weights(list(cross["source_domain"]), ["chat", "math", "reasoning"])
    assert w[0].tolist() == [1, 0, 1] and w[3].tolist() == [0, 1, 1]  # two-hot labels


# ---------------------------------------------------------------- the paper profiles

@pytest.mark.parametrize("name", ["tinyllama-paper-local", "tinyllama-paper-hf", "gemma3-12b-paper-local",
                                  "gemma3-12b-paper-hf"])
def test_paper_profiles_carry_the_papers_numbers(name):
    p = load_profile(ROOT / "configs" / f"{name}.yaml")  # config-check validation only: nothing is fetched
    t, r = p.training, p.router
    assert (t.keep_rule, t.ablation, t.min_loss_delta, t.basis.rows, t.basis.combine) == \
        ("paper", True, 0.002, "per_sample", "joint")
    assert (r.feature_mix, r.checkpoint_score, r.chat_floor, r.gate_threshold, r.epochs) == \
        (0.45, "paper", 0.20, 0.12, 8)
    if name.startswith("tinyllama"):  # Experiment 2 (4.2) with 4.1's trainer settings
        assert (t.basis.k, t.null_space_val_rows, t.max_rounds) == (32, 200, 3)
        assert (t.sft.learning_rate, t.sft.max_steps, t.sft.packing) == (2e-4, 400, True)
        assert p.curriculum == ["chat", "code", "medical", "math"]
    else:  # Experiment 3 (4.3) and 3.5
        assert (t.basis.k, t.null_space_val_rows, t.max_rounds) == (64, 400, 2)
        assert (t.sft.learning_rate, t.sft.max_steps) == (1e-4, 500)
        assert t.for_domain("reasoning").sft.max_steps == 600 and t.for_domain("math").sft.max_steps == 500
        assert len(r.cross_domain_pairs) == 4
    kinds = {s.kind for srcs in p.data.sources.values() for s in srcs}
    assert ("hf" in kinds) == name.endswith("-hf")
    for s in (s for srcs in p.data.sources.values() for s in srcs if s.kind == "hf"):
        assert s.revision or s.track  # pinned, or the commit read at preparation is recorded
