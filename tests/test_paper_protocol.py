"""The paper's evaluation protocol beside lm-eval's (issue 22, item 2).

* every multiple-choice item's score is the mean per-token log-probability of each choice,
  equal (to 1e-5) to a naive hand computation from the model's own token log-probs, in base
  and routed mode, at the protocol's max length (left-truncated contexts included);
* the Alpaca GSM8K prompt is zero-shot: one instruction, no example answers, and no
  few-shot file is even read;
* the two protocols' results never mix: their own version, folder, ``results.json``
  ``protocol`` key, catalog artifact and table heading; the paper table has no lm-eval ``acc``;
* n and max length come from ``eval.paper`` (200 and 512 by default); the profiles keep
  lm-eval as the default and the paper profiles add ``paper``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import DOMAINS, VERSIONS, stacked
from test_eval_cache import PLANTED, _gsm8k_files

from brainstacks_core.evaluation.config import EvalConfig, PaperProtocolConfig
from brainstacks_core.evaluation.model import BrainstacksLM, weighted
from brainstacks_core.evaluation.protocol import protocol_config
from brainstacks_core.evaluation.routing import FixedRouter, stack_weights
from brainstacks_core.evaluation.run import evaluate_model
from brainstacks_core.evaluation.suite import task_spec
from brainstacks_core.evaluation.task_data import demo_docs
from brainstacks_core.lineage.catalog import Catalog

ROOT = Path(__file__).resolve().parents[1]
ROUTER = FixedRouter(["math", "medical"], {"medical": 1.0}, rules=[("How", {"math": 1.0})])


def _cfg(limit: int = 5, max_length: int = 512, tasks=("demo_math",), **kw) -> EvalConfig:
    return EvalConfig(tasks=("demo_math",), limit=6, demo_items=8, bootstrap_iters=20, **kw,
                      paper=PaperProtocolConfig(tasks=tasks, limit=limit, max_length=max_length, max_gen_toks=4))


def _evaluate(model, tok, cfg, tmp_path, catalog, protocol, data_dir=None, **kw):
    return evaluate_model(model, tok, cfg, profile_name="t", run_name="r", store=tmp_path / "store",
                          data_dir=data_dir or tmp_path, base_fingerprint="base-fp", stack_versions=VERSIONS,
                          domain_stacks=DOMAINS, router=ROUTER, catalog=catalog, progress=False, protocol=protocol,
                          **kw)


def _hand_mean_logprob(model, tok, context: str, continuation: str, max_length: int) -> float:
    """Naive reference: the continuation's token log-probs under one forward pass, averaged.

    Context and continuation split as a causal LM sees them (the context's trailing spaces
    belong to the continuation; the continuation's tokens are those of the whole text after
    the context's), the input left-truncated to ``max_length`` tokens.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx):]
    ids = (ctx + cont)[-(max_length + 1):][:-1]  # the last token is only a target
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    first = len(ids) - len(cont)  # position whose output predicts the continuation's first token
    return sum(logp[first + j, t].item() for j, t in enumerate(cont)) / len(cont)


@pytest.mark.parametrize("max_length", [512, 24])
def test_per_token_mean_equals_a_hand_computation_in_base_and_routed_mode(tmp_path, max_length):
    _, model, tok = stacked()
    cat = Catalog(tmp_path / "catalog.duckdb")
    out = _evaluate(model, tok, _cfg(limit=4, max_length=max_length), tmp_path, cat, "paper")
    docs = demo_docs("demo_math", 8, 2000)
    items = cat.eval_items(out["version"])
    assert set(items["mode"]) == {"base", "routed"}  # the paper compares base and routed
    truncated = 0
    for row in items.itertuples():
        doc = docs[row.doc_id]
        context = f"Question: {doc['question']}\nAnswer:"
        weights = {} if row.mode == "base" else stack_weights(ROUTER, DOMAINS, [context])[0]
        scores = json.loads(row.scores)
        with weighted(model, weights):
            hand = [_hand_mean_logprob(model, tok, context, " " + c, max_length) for c in doc["choices"]]
        assert scores["mean_logprob"] == pytest.approx(hand, abs=1e-5), (row.mode, row.doc_id)
        best = max(range(len(hand)), key=hand.__getitem__)
        assert json.loads(row.metrics)["acc_mean_per_token"] == float(best == doc["gold"])
        truncated += len(tok.encode(context)) > max_length
    assert (truncated > 0) == (max_length == 24)  # the short length really cut contexts
    for mode in ("base", "routed"):
        rows = items[items["mode"] == mode]
        want = sum(json.loads(m)["acc_mean_per_token"] for m in rows["metrics"]) / len(rows)
        assert out["summary"]["demo_math"][mode]["scores"]["acc_mean_per_token,none"]["value"] == pytest.approx(want)


def test_the_alpaca_gsm8k_prompt_is_zero_shot(tmp_path, monkeypatch):
    data_dir = _gsm8k_files(tmp_path)
    spec = task_spec("gsm8k", protocol_config(EvalConfig(), "paper"), data_dir, tmp_path / "conv", protocol="paper")
    assert set(spec.data) == {"test"} and spec.config["num_fewshot"] == 0  # no few-shot file is read
    assert (spec.metric, spec.filter) == ("exact_match", "flexible-extract")
    (data_dir / "gsm8k" / "train.jsonl").unlink()  # and none is needed

    contexts = {}
    real_gen = BrainstacksLM.generate_until

    def spy(self, requests, disable_tqdm=False):
        contexts.setdefault(self.mode, []).extend(r.args[0] for r in requests)
        return real_gen(self, requests, disable_tqdm)

    monkeypatch.setattr(BrainstacksLM, "generate_until", spy)
    _, model, tok = stacked()
    cfg = _cfg(limit=3, tasks=("gsm8k",))
    out = _evaluate(model, tok, cfg, tmp_path, None, "paper", data_dir=data_dir, modes=["base"])
    questions = list(PLANTED)[:3]
    assert len(contexts["base"]) == 3
    for ctx, q in zip(contexts["base"], questions):
        assert ctx == ("Below is an instruction that describes a task. Write a response that appropriately "
                       f"completes the request.\n\n### Instruction:\n{q}\n\n### Response:\n")
        assert "####" not in ctx and "Shot" not in ctx and ctx.count("### Instruction:") == 1
    assert "| gsm8k | exact_match,flexible-extract | 3 |" in out["markdown"]


def test_the_two_protocols_results_live_under_their_own_keys_and_tables(tmp_path):
    _, model, tok = stacked()
    cat = Catalog(tmp_path / "catalog.duckdb")
    cfg = _cfg(limit=4)
    std = _evaluate(model, tok, cfg, tmp_path, cat, "lm-eval", modes=["base", "routed"])
    paper = _evaluate(model, tok, cfg, tmp_path, cat, "paper")
    assert (std["protocol"], paper["protocol"]) == ("lm-eval", "paper")
    assert std["version"] != paper["version"]
    assert Path(paper["results"]).parent.parent.name == "paper" and Path(std["results"]).parent.parent.name == "r"
    assert json.loads(Path(std["results"]).read_text())["protocol"] == "lm-eval"
    doc = json.loads(Path(paper["results"]).read_text())
    assert doc["protocol"] == "paper" and doc["settings"]["max_length"] == 512
    assert cat.latest("eval://t/r")["version"] == std["version"]
    assert cat.latest("eval://t/r/paper")["version"] == paper["version"]
    assert len(cat.eval_items(std["version"])) == 2 * 6 and len(cat.eval_items(paper["version"])) == 2 * 4
    # separate tables: the paper's heading and score only; lm-eval's acc and its labelled per-token score
    assert paper["markdown"].startswith("## Benchmarks (paper protocol: mean per-token log-prob, zero-shot Alpaca "
                                        "GSM8K, n=4, len 512)")
    assert std["markdown"].startswith("## Benchmark evaluation (`r`, lm-evaluation-harness)")
    assert "| demo_math | acc_mean_per_token | 4 |" in paper["markdown"]
    assert "| acc |" not in paper["markdown"] and "acc_norm" not in paper["markdown"]
    assert "paper protocol" not in std["markdown"] and "| demo_math | acc | 6 |" in std["markdown"]
    assert "| demo_math | acc_mean_per_token (paper's score) | 6 |" in std["markdown"]
    assert set(paper["summary"]["demo_math"]["base"]["scores"]) == {"acc_mean_per_token,none"}
    # a re-run of each protocol reproduces its own version, scoring nothing
    again = _evaluate(model, tok, cfg, tmp_path, cat, "paper")
    assert again["version"] == paper["version"] and again["computed"] == 0


def test_n_and_max_length_come_from_the_paper_section(tmp_path):
    paper = protocol_config(EvalConfig(limit=1000, task_limits={"gsm8k": 500}, max_length=2048,
                                       num_fewshot={"gsm8k": 5}), "paper")
    assert (paper.limit, paper.task_limits, paper.max_length, paper.num_fewshot) == (200, {}, 512, {})
    assert paper.modes == ("base", "routed") and len(paper.tasks) == 8  # the paper's 8 benchmarks
    assert EvalConfig().protocols == ("lm-eval",)  # the standard stays the default
    _, model, tok = stacked()
    seen = []
    real_init = BrainstacksLM.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        seen.append(self.max_length)

    cfg = _cfg(limit=3, max_length=40)
    BrainstacksLM.__init__ = spy
    try:
        out = _evaluate(model, tok, cfg, tmp_path, None, "paper")
    finally:
        BrainstacksLM.__init__ = real_init
    assert seen == [40, 40]
    assert all(out["summary"]["demo_math"][m]["n"] == 3 for m in ("base", "routed"))
    doc = json.loads(Path(out["results"]).read_text())
    assert doc["tasks"]["demo_math"]["limit"] == 3 and doc["settings"]["max_length"] == 40
    with pytest.raises(ValueError, match="unknown eval protocol 'papers'"):
        protocol_config(cfg, "papers")


def test_profiles_keep_lm_eval_the_default_and_paper_profiles_add_paper():
    import yaml

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()).get("eval") or {}
        cfg = EvalConfig(**raw)
        assert cfg.protocols[0] == "lm-eval", path.name
        assert ("paper" in cfg.protocols) == ("-paper-" in path.name), path.name


@pytest.mark.slow
def test_brainstacks_eval_protocol_paper_prints_its_own_table(tmp_path, harness, capsys):
    """``brainstacks eval --protocol paper`` (the ``evaluate`` flow) before training: base mode on the base."""
    import yaml
    from test_eval_flow import _profile

    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.profile import load_profile
    from flows.cli import main

    cfg, art = _profile(tmp_path), tmp_path / "art"
    raw = yaml.safe_load(cfg.read_text())
    raw["eval"]["paper"] = {"tasks": ["demo_math"], "limit": 3, "max_length": 64}
    cfg.write_text(yaml.safe_dump(raw))
    profile = load_profile(cfg, artifact_root=art)
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    common = ["eval", "--config", str(cfg), "--artifact-root", str(art), "--mode", "base"]
    paper_heading = "## Benchmarks (paper protocol: mean per-token log-prob, zero-shot Alpaca GSM8K, n=3, len 64)"

    assert main([*common, "--protocol", "paper"]) == 0
    out = capsys.readouterr().out
    assert paper_heading in out and "| demo_math | acc_mean_per_token | 3 |" in out
    assert "lm-evaluation-harness)" not in out and "paper protocol: Requests: base 12 computed" in out
    assert cat.latest("eval://evalmini/main/paper") is not None and cat.latest("eval://evalmini/main") is None

    assert main([*common, "--protocol", "lm-eval,paper", "--tasks", "demo_math"]) == 0
    out = capsys.readouterr().out
    std_at, paper_at = out.index("## Benchmark evaluation (`main`, lm-evaluation-harness)"), out.index(paper_heading)
    assert std_at < paper_at and "| demo_math | acc | 6 |" in out[:paper_at]  # two tables, in the order asked
    assert "paper protocol: Requests: base 0 computed, 12 from the cache" in out  # the same requests: cached
    assert cat.latest("eval://evalmini/main") is not None

    assert main([*common, "--protocol", "pape"]) == 2
    assert "unknown eval protocol 'pape'" in capsys.readouterr().err


def test_the_paper_heading_states_the_n_actually_scored():
    from brainstacks_core.evaluation.protocol import title

    cfg = protocol_config(EvalConfig(), "paper")
    assert title("paper", cfg, "main").endswith("n=200, len 512) (`main`)")
    assert "n=50, len 512" in title("paper", cfg, "main", {"arc_easy": 50, "gsm8k": 50})  # --limit 50
    assert "n=per task" in title("paper", cfg, "main", {"arc_easy": 50, "gsm8k": 20})
