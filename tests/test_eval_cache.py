"""Benchmark evaluation on tiny in-memory models (issue 11): the score cache, GSM8K extraction, bad requests.

* a re-run scores nothing: 0 model forwards, 0 requests computed, 0 prompts routed;
* a changed stack re-scores only what depends on it: base entirely reused, ungated
  recomputed, routed recomputed only for the requests routed to the changed stack
  (the cache keys each request by the stacks that are on for it), and the reused
  scores equal a fresh evaluation's;
* GSM8K answers are extracted by the harness's own filters of ``tasks/gsm8k.yaml``
  (strict-match and flexible-extract) and scored by its exact_match; its 5 shots are
  the same on every run (seeded), so a re-run hits the cache;
* an unknown mode or task is named in the error (core; CLI, also for a typo in the profile).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from eval_helpers import DOMAINS, VERSIONS, add_random_stack, stacked
from lm_eval import evaluator
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager, get_task_dict

from brainstacks_core.evaluation import results as R
from brainstacks_core.evaluation.config import EvalConfig
from brainstacks_core.evaluation.routing import FixedRouter
from brainstacks_core.evaluation.run import evaluate_model
from brainstacks_core.evaluation.suite import task_spec
from brainstacks_core.evaluation.task_data import demo_docs
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.stacks.inject import remove_stack

ROOT = Path(__file__).resolve().parents[1]
CFG = EvalConfig(tasks=("demo_math",), limit=6, demo_items=8, bootstrap_iters=20)
# "How many ..." questions (5 of the first 6) go to the math stack, every other prompt to the medical stack.
ROUTER = FixedRouter(["math", "medical"], {"medical": 1.0}, rules=[("How", {"math": 1.0})])


def _evaluate(model, tok, tmp_path, catalog, versions=VERSIONS):
    return evaluate_model(model, tok, CFG, profile_name="t", run_name="r", store=tmp_path / "store",
                          data_dir=tmp_path, base_fingerprint="base-fp", stack_versions=versions,
                          domain_stacks=DOMAINS, router=ROUTER, catalog=catalog, progress=False)


def _requests() -> tuple[int, int]:
    """(all requests per mode, requests routed to math) of CFG's tasks, counted from the documents."""
    docs = [d for t in CFG.tasks for d in demo_docs(t, CFG.demo_items, 2000)[:CFG.limit]]
    return (sum(len(d["choices"]) for d in docs),
            sum(len(d["choices"]) for d in docs if "How" in f"Question: {d['question']}\nAnswer:"))


def _scores(out: dict) -> dict:
    return {t: {m: v["scores"] for m, v in by_mode.items()} for t, by_mode in out["summary"].items()}


def test_a_rerun_scores_nothing(tmp_path):
    _, model, tok = stacked()
    cat = Catalog(tmp_path / "catalog.duckdb")
    first = _evaluate(model, tok, tmp_path, cat)
    total, _ = _requests()
    assert {m: c["computed"] for m, c in first["per_mode"].items()} == {"base": total, "ungated": total,
                                                                        "routed": total}
    assert first["per_mode"]["routed"]["routes_computed"] > 0
    forwards = []
    hook = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        again = _evaluate(model, tok, tmp_path, cat)
    finally:
        hook.remove()
    assert len(forwards) == 0
    assert again["computed"] == 0 and again["reused"] == 3 * total
    assert again["per_mode"]["routed"]["routes_computed"] == 0
    assert again["version"] == first["version"] and _scores(again) == _scores(first)
    # the re-run rewrote the version's results file byte for byte: the catalog's sha256 still holds
    from brainstacks_core.files import sha256_file

    assert sha256_file(again["results"]) == cat.get(first["version"])["sha256"]


def test_a_changed_stack_rescores_only_what_depends_on_it(tmp_path):
    _, model, tok = stacked()
    cat = Catalog(tmp_path / "catalog.duckdb")
    _evaluate(model, tok, tmp_path, cat)
    total, to_math = _requests()
    assert 0 < to_math < total  # both stacks are routed to

    remove_stack(model, "math-r1")  # math retrains: new weights, new version
    add_random_stack(model, "math-r1", seed=99)
    versions = {**VERSIONS, "math-r1": "v-math-2"}
    second = _evaluate(model, tok, tmp_path, cat, versions)
    pm = second["per_mode"]
    assert (pm["base"]["computed"], pm["base"]["reused"]) == (0, total)
    assert (pm["ungated"]["computed"], pm["ungated"]["reused"]) == (total, 0)
    assert (pm["routed"]["computed"], pm["routed"]["reused"]) == (to_math, total - to_math)
    # what the cache answered is what scoring afresh gives
    fresh = _evaluate(model, tok, tmp_path / "fresh", None, versions)
    assert _scores(second) == _scores(fresh)


class PlantedGenerations(LM):
    """A model whose greedy answers are planted per question (the harness filters are what is tested)."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers

    def generate_until(self, requests, disable_tqdm: bool = False):
        return [self.answers[r.doc["question"]] for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


# question -> (reference answer, planted generation, strict-match extraction, flexible-extract extraction,
#              exact_match strict, exact_match flexible)
PLANTED = {
    "Q1 eggs": ("40 + 2 = 42\n#### 42", "She has 40 + 2 = 42 eggs.\n#### 42", "42", "42", 1, 1),
    "Q2 total": ("#### 1234", "The total is 1,000 + 234. The answer is 1,234.", "[invalid]", "1,234.", 0, 1),
    "Q3 trailing": ("#### 7", "7 apples remain.\n#### 7.", "7.", "7.", 1, 1),
    "Q4 wrong": ("#### 5", "I think it is 6.\n#### 6", "6", "6", 0, 0),
    "Q5 dollars": ("#### 18", "Nia pays $18.", "[invalid]", "$18.", 0, 1),
}


def _gsm8k_files(tmp_path: Path) -> Path:
    """``gsm8k/test.jsonl`` (the PLANTED questions) and ``gsm8k/train.jsonl`` (20 rows the 5 shots come from)."""
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text("".join(json.dumps({"question": q, "answer": a[0]}) + "\n"
                                             for q, a in PLANTED.items()))
    (data / "train.jsonl").write_text("".join(json.dumps({"question": f"Shot {i}: what is {i} + 1?",
                                                          "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                                              for i in range(20)))
    return data.parent


def test_gsm8k_extraction_uses_the_harness_filters_of_the_task_yaml(tmp_path):
    spec = task_spec("gsm8k", EvalConfig(), _gsm8k_files(tmp_path), tmp_path / "converted")
    assert {f["name"] for f in spec.config["filter_list"]} == {"strict-match", "flexible-extract"}
    lm = PlantedGenerations({q: a[1] for q, a in PLANTED.items()})
    out = evaluator.evaluate(lm, get_task_dict([spec.config], TaskManager(include_defaults=False)),
                             bootstrap_iters=10, log_samples=True)
    got = {(s["doc"]["question"], s["filter"]): (s["filtered_resps"][0], s["exact_match"])
           for s in out["samples"]["gsm8k"]}
    for q, (_, _, strict, flexible, em_strict, em_flexible) in PLANTED.items():
        assert got[(q, "strict-match")] == (strict, em_strict), q
        assert got[(q, "flexible-extract")] == (flexible, em_flexible), q
    scores = R.task_scores(spec, out)
    assert scores["exact_match,strict-match"]["value"] == pytest.approx(2 / 5)
    assert scores["exact_match,flexible-extract"]["value"] == pytest.approx(4 / 5)
    # the per-item rows keep the generation and each filter's extraction
    rows = R.item_rows(spec, {"mode": "base", "id": "x"}, out, lm)
    flex = rows[rows["filter"] == "flexible-extract"]
    assert sorted(json.loads(s)["extracted"] for s in flex["scores"]) == sorted(a[3] for a in PLANTED.values())


def test_few_shot_contexts_are_the_same_on_every_run(tmp_path):
    """GSM8K's 5 shots are sampled with the harness's fixed seed, so a re-run hits the cache."""
    _, model, tok = stacked()
    cat = Catalog(tmp_path / "catalog.duckdb")
    cfg = EvalConfig(tasks=("gsm8k",), modes=("base",), max_gen_toks=4, bootstrap_iters=10)
    data = _gsm8k_files(tmp_path)

    def run():
        return evaluate_model(model, tok, cfg, profile_name="t", run_name="r", store=tmp_path / "store",
                              data_dir=data, base_fingerprint="b", stack_versions=VERSIONS, catalog=cat,
                              progress=False)

    first = run()
    assert first["computed"] == len(PLANTED)
    again = run()
    assert again["computed"] == 0 and _scores(again) == _scores(first)


def test_an_unknown_mode_or_task_is_named(tmp_path, capsys):
    _, model, tok = stacked()
    for kw, name in (({"modes": ["base", "fast"]}, "'fast'"), ({"tasks": ["demo_math", "hellaswag2"]}, "'hellaswag2'")):
        with pytest.raises(ValueError, match=name):
            evaluate_model(model, tok, CFG, profile_name="t", run_name="r", store=tmp_path, data_dir=tmp_path,
                           base_fingerprint="b", stack_versions=VERSIONS, progress=False, **kw)
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["eval"]["tasks"] = ["demo_math", "arc_easyy"]  # a typo in the profile
    (tmp_path / "configs").mkdir()
    bad = tmp_path / "configs" / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))

    from flows.cli import main

    demo = str(ROOT / "configs" / "demo.yaml")
    for args, name in (([demo, "--tasks", "demo_math,nope"], "'nope'"), ([demo, "--mode", "base,fast"], "'fast'"),
                       ([str(bad)], "'arc_easyy'")):
        assert main(["eval", "--config", *args]) == 2
        assert name in capsys.readouterr().err
    from flows.pipeline import brainstacks_pipeline

    with pytest.raises(ValueError, match="'arc_easyy'"):  # `brainstacks run` stops before preparing any data
        brainstacks_pipeline.fn(config_path=str(bad), artifact_root=str(tmp_path / "art"))
    assert not (tmp_path / "art").exists()
    with pytest.raises(SystemExit):
        main(["eval", "--limit", "0"])
    assert "positive integer" in capsys.readouterr().err


@pytest.mark.shared_data
def test_mean_per_token_counts_any_true_mc2_answer_and_only_mc1s_gold_for_mc1(tmp_path):
    """The paper's score on MC2 counts an argmax on any true answer (labels 1), not only on choice 0;
    on MC1 (the same documents, which also carry MC2's labels) only MC1's one gold counts."""
    data_dir = ROOT.parent / "shared" / "data"
    if not (data_dir / "truthfulqa" / "mc_task.json").is_file():
        pytest.skip("needs ../shared/data/truthfulqa/mc_task.json")
    _, model, tok = stacked()
    cfg = EvalConfig(tasks=("truthfulqa_mc1", "truthfulqa_mc2"), limit=40, modes=("base",), bootstrap_iters=20)
    cat = Catalog(tmp_path / "catalog.duckdb")
    out = evaluate_model(model, tok, cfg, profile_name="t", run_name="r", store=tmp_path / "store",
                         data_dir=data_dir, base_fingerprint="base-fp", stack_versions=VERSIONS,
                         domain_stacks=DOMAINS, catalog=cat, progress=False)
    docs = json.loads((data_dir / "truthfulqa" / "mc_task.json").read_text())[:40]
    items = cat.eval_items(out["version"])
    for task, targets in (("truthfulqa_mc1", "mc1_targets"), ("truthfulqa_mc2", "mc2_targets")):
        rows = items[items["task"] == task]
        assert len(rows) == 40
        hits = hits_first = 0
        for row in rows.itertuples():
            s = json.loads(row.scores)
            per_token = [ll / max(1, n) for ll, n in zip(s["loglikelihood"], s["continuation_tokens"])]
            best = per_token.index(max(per_token))
            labels = list(docs[row.doc_id][targets].values())
            assert len(labels) == len(per_token)
            hits += labels[best] == 1
            hits_first += best == 0
            assert json.loads(row.metrics)["acc_mean_per_token"] == float(labels[best] == 1), (task, row.doc_id)
        if task == "truthfulqa_mc2":
            assert hits > hits_first  # the items where the difference shows exist in this sample
        score = out["summary"][task]["base"]["scores"]["acc_mean_per_token (paper's score),none"]
        assert score["value"] == pytest.approx(hits / 40)
