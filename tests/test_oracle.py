"""Oracle discovery: per-row batched losses, the catalog cache, greedy search, soft boost (issue 10, item 2)."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest
import torch

from brainstacks_core.base.config import TinyBaseConfig
from brainstacks_core.base.tiny_base import build_tiny_llama, train_tokenizer
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.oracle import (
    _search,
    combination_markdown,
    combination_table,
    discover,
    greedy_regret,
)
from brainstacks_core.routing.pair_loss import PairLosses
from brainstacks_core.stacks.inject import (
    add_active_stack,
    freeze_active_stack,
    inject_stacks,
    only_stacks,
    stacked_layers,
)
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.training.loss import completion_loss

TEXTS = ["hello there how are you", "def f(x): return x + 1", "two plus two is four", "the patient has a fever"]
CFG = RouterConfig(oracle_batch_size=5, exhaustive_sample=3, soft_boost={}, prefix_seeds=False)


def _add_stack(model, sid, seed):
    add_active_stack(model, sid, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in stacked_layers(model).values():
            layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 2.0)
    freeze_active_stack(model)


@pytest.fixture()
def setup():
    tok = train_tokenizer(TEXTS * 4, vocab_size=300)
    model = build_tiny_llama(TinyBaseConfig(vocab_size=320, hidden_size=32, intermediate_size=64,
                                            num_attention_heads=4, num_key_value_heads=2), tok)
    inject_stacks(model, MoELoRAConfig(num_experts=4, rank=4, alpha=8))
    for j, sid in enumerate(["chat-r0", "code-r0", "math-r0"]):
        _add_stack(model, sid, j + 1)
    pairs = pd.DataFrame([{"record_id": f"r{i}", "source_domain": d, "prompt": p, "response": a}
                          for i, (d, p, a) in enumerate([("chat", "hello there", "how are you"),
                                                         ("code", "def f(x):", "return x + 1"),
                                                         ("math", "two plus two", "is four"),
                                                         ("math", "two plus", "two is four four"),
                                                         ("chat", "the patient", "has a fever")])])
    return model.eval(), tok, pairs


STACKS = {"chat": ["chat-r0"], "code": ["code-r0"]}
VERSIONS = {"chat-r0": "v-chat", "code-r0": "v-code", "math-r0": "v-math"}


def test_batched_per_row_losses_equal_one_combination_per_forward(setup):
    model, tok, pairs = setup
    pl = PairLosses(model, tok, pairs, {**STACKS, "math": ["math-r0"]}, VERSIONS, "base-fp", CFG, progress=False)
    combos = [frozenset(), frozenset({"chat"}), frozenset({"code", "math"}), frozenset({"chat", "code", "math"})]
    pl.ensure([(i, c) for i in range(len(pairs)) for c in combos])
    assert pl.forwards == -(-len(pairs) * len(combos) // CFG.oracle_batch_size)  # rows of mixed combos per forward
    for i in range(len(pairs)):
        for c in combos:
            keep = [s for d in c for s in {**STACKS, "math": ["math-r0"]}[d]]
            with only_stacks(model, keep):
                want = completion_loss(model, tok, pairs.iloc[[i]], CFG.max_length)
            assert pl.get(i, c) == pytest.approx(want, rel=1e-5, abs=1e-5), (i, sorted(c))
    assert len({round(pl.get(0, c), 4) for c in combos}) == len(combos)  # the stacks do change the loss


def test_rerun_is_free_and_new_or_retrained_domains_compute_only_their_combinations(setup, tmp_path):
    model, tok, pairs = setup
    cat = Catalog(tmp_path / "catalog.duckdb")
    first = discover(model, tok, pairs, STACKS, VERSIONS, "base-fp", CFG, cat, progress=False)
    assert first.forwards > 0 and first.reused == 0
    again = discover(model, tok, pairs, STACKS, VERSIONS, "base-fp", CFG, cat, progress=False)
    assert again.forwards == 0 and again.computed == 0 and again.reused == first.computed
    pd.testing.assert_frame_equal(again.targets, first.targets)
    assert again.version == first.version

    def rows():
        with duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True) as con:
            return set(con.execute("SELECT key, combo FROM oracle_losses").fetchall())

    before = rows()
    three = {**STACKS, "math": ["math-r0"]}
    added = discover(model, tok, pairs, three, VERSIONS, "base-fp", CFG, cat, progress=False)
    new = rows() - before
    assert added.computed == len(new) > 0
    assert all("math" in combo.split("+") for _, combo in new)  # nothing without math was recomputed
    assert added.reused > 0

    before = rows()
    retrained = {**VERSIONS, "code-r0": "v-code-2"}
    again = discover(model, tok, pairs, three, retrained, "base-fp", CFG, cat, progress=False)
    new = rows() - before
    assert again.computed == len(new) > 0 and all("code" in combo.split("+") for _, combo in new)
    # a different base reads none of it
    other = discover(model, tok, pairs, STACKS, VERSIONS, "other-base", CFG, cat, progress=False)
    assert other.reused == 0


def _planted(setup, losses: dict[tuple[int, frozenset], float], n: int):
    model, tok, pairs = setup
    pl = PairLosses(model, tok, pairs.head(n), {**STACKS, "math": ["math-r0"]}, VERSIONS, "fp", CFG,
                    progress=False)
    pl.losses.update(losses)
    return pl


def test_greedy_search_threshold_and_exhaustive_regret(setup):
    f = frozenset
    doms = ["chat", "code", "math"]
    # pair 0: math alone best, +chat helps 0.5 more, +code hurts -> {chat, math} (optimal)
    # pair 1: nothing helps by more than 0.01 -> base (chat alone is 0.005 better: regret)
    # pair 2: greedy takes chat (best single) but code+math together is better: regret
    table = {0: {(): 3.0, ("chat",): 2.5, ("code",): 2.9, ("math",): 2.0, ("chat", "math"): 1.5,
                 ("code", "math"): 1.9, ("chat", "code"): 2.4, ("chat", "code", "math"): 1.6},
             1: {(): 1.0, ("chat",): 0.995, ("code",): 1.2, ("math",): 1.1, ("chat", "math"): 1.0,
                 ("code", "math"): 1.3, ("chat", "code"): 1.3, ("chat", "code", "math"): 1.4},
             2: {(): 3.0, ("chat",): 2.0, ("code",): 2.2, ("math",): 2.3, ("chat", "math"): 1.995,
                 ("code", "math"): 1.0, ("chat", "code"): 1.999, ("chat", "code", "math"): 2.5}}
    pl = _planted(setup, {(i, f(c)): x for i, t in table.items() for c, x in t.items()}, 3)
    chosen = _search(pl, 3, doms, CFG, None)
    assert chosen == [f({"chat", "math"}), f(), f({"chat"})]
    assert pl.computed == 0  # everything planted: nothing ran
    reg = greedy_regret(pl, [0, 1, 2], chosen, doms)
    assert reg["combinations"] == 8 and reg["optimal_fraction"] == pytest.approx(1 / 3)
    assert reg["max_regret"] == pytest.approx(1.0) and reg["mean_regret"] == pytest.approx((0 + 0.005 + 1.0) / 3)


def test_curriculum_prefix_seeds_find_stacks_that_only_help_together(setup):
    f = frozenset
    doms = ["chat", "code", "math"]
    # math's stacks were trained on top of chat's and code's: alone nothing helps, the prefix does
    losses = {(): 2.0, ("chat",): 2.0, ("code",): 2.1, ("math",): 2.05, ("chat", "code"): 1.995,
              ("chat", "code", "math"): 1.2, ("chat", "math"): 2.2, ("code", "math"): 2.3}
    pl = _planted(setup, {(0, f(c)): x for c, x in losses.items()}, 1)
    assert _search(pl, 1, doms, CFG, None) == [f()]  # singles only: stuck at base
    with_prefixes = CFG.model_copy(update={"prefix_seeds": True})
    assert _search(pl, 1, doms, with_prefixes, None) == [f(doms)]


def test_soft_boost_and_label_blend(setup):
    f = frozenset
    model, tok, pairs = setup
    doms = {"chat": ["chat-r0"], "math": ["math-r0"]}
    cfg = RouterConfig(soft_boost={"math": 0.5}, label_blend=0.8, exhaustive_sample=0, prefix_seeds=False)
    pl_losses = {(0, f()): 2.0, (0, f({"chat"})): 1.0, (0, f({"math"})): 1.9, (0, f({"chat", "math"})): 0.999}
    pl = PairLosses(model, tok, pairs.head(1), doms, VERSIONS, "fp", cfg, progress=False)
    pl.losses.update(pl_losses)
    from brainstacks_core.routing import oracle as O

    chosen = O._search(pl, 1, ["chat", "math"], cfg, None)
    assert chosen == [f({"chat"})]  # math adds only 0.001 < 0.01
    w, loss, best = O._oracle_weights(pl, 0, chosen[0], ["chat", "math"], cfg)
    assert w == {"chat": 1.0, "math": 0.5} and loss == pytest.approx(0.999) and best == f({"chat", "math"})
    w0, _, _ = O._oracle_weights(pl, 0, chosen[0], ["chat", "math"], cfg.model_copy(update={"soft_boost": {}}))
    assert w0 == {"chat": 1.0, "math": 0.0}


def test_targets_blend_and_combination_table(setup, tmp_path):
    model, tok, pairs = setup
    cfg = CFG.model_copy(update={"label_blend": 0.8})
    res = discover(model, tok, pairs, STACKS, VERSIONS, "fp", cfg, None, progress=False)
    t = res.targets
    for d in ["chat", "code"]:
        want = 0.8 * t[f"oracle_{d}"] + 0.2 * (t["source_domain"] == d).astype(float)
        assert t[f"target_{d}"].tolist() == pytest.approx(want.tolist())
    assert (t["oracle_loss"] <= t["base_loss"] + 1e-9).all()
    table = combination_table(t)
    assert table.groupby("source_domain")["n"].sum().to_dict() == t["source_domain"].value_counts().to_dict()
    assert table.groupby("source_domain")["share"].sum().tolist() == pytest.approx([1.0] * table.source_domain.nunique())
    md = combination_markdown(table)
    assert "| math |" in md and "%" in md
    assert res.regret["n"] == 3 and res.regret["mean_regret"] >= 0
