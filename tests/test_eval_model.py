"""BrainstacksLM: agrees with the harness's HFLM in base mode; routed mode = ungated on the routed stacks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from eval_helpers import DOMAINS, VERSIONS, stacked
from lm_eval import evaluator
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager, get_task_dict

from brainstacks_core.evaluation.config import EvalConfig
from brainstacks_core.evaluation.model import BrainstacksLM
from brainstacks_core.evaluation.routing import FixedRouter
from brainstacks_core.evaluation.suite import task_spec
from brainstacks_core.stacks.inject import remove_stack


@pytest.fixture(scope="module")
def models():
    return stacked()


def _requests(pairs):
    return [Instance("loglikelihood", {}, pair, i, ("t", i, 1)) for i, pair in enumerate(pairs)]


PAIRS = [("Question: alpha how many apples?\nAnswer:", " 12"), ("Question: beta which symptoms?\nAnswer:", " fever"),
         ("Question: alpha and beta?\nAnswer:", " both"), ("Question: beta again\nAnswer:", " 3 apples"),
         ("Question: alpha once more\nAnswer:", " no")]


def _lls(lm, pairs=PAIRS):
    return torch.tensor([ll for ll, _ in lm.loglikelihood(_requests(pairs), disable_tqdm=True)])


def test_base_mode_matches_the_harness_hflm_on_a_harness_task(models, tmp_path):
    plain, model, tok = models
    spec = task_spec("demo_math", EvalConfig(demo_items=8), Path("."), tmp_path)
    manager = TaskManager(include_defaults=False)

    def samples(lm):
        out = evaluator.evaluate(lm, get_task_dict([spec.config], manager), limit=6, bootstrap_iters=10)
        return torch.tensor([[r[0] for r in s["filtered_resps"]] for s in out["samples"]["demo_math"]])

    ref = samples(HFLM(pretrained=plain, tokenizer=tok, batch_size=4, device="cpu"))
    ours = samples(BrainstacksLM(model, tok, mode="base", base_fingerprint="b", stack_versions=VERSIONS,
                                 batch_size=3))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    ungated = samples(BrainstacksLM(model, tok, mode="ungated", base_fingerprint="b", stack_versions=VERSIONS))
    assert (ungated - ref).abs().max() > 1e-3  # the stacks do change the scores: the modes are real


def test_routed_to_a_fixed_set_equals_ungated_restricted_to_it(models):
    _, model, tok = models
    for domain, other in (("math", "medical-r1"), ("medical", "math-r1")):
        router = FixedRouter(["math", "medical"], {domain: 1.0})
        routed = _lls(BrainstacksLM(model, tok, mode="routed", base_fingerprint="b", stack_versions=VERSIONS,
                                    router=router, domain_stacks=DOMAINS))
        only = copy.deepcopy(model)
        remove_stack(only, other)
        ungated = _lls(BrainstacksLM(only, tok, mode="ungated", base_fingerprint="b",
                                     stack_versions={k: v for k, v in VERSIONS.items() if k != other}))
        torch.testing.assert_close(routed, ungated, rtol=1e-5, atol=1e-5)


def test_requests_of_one_batch_route_differently(models):
    _, model, tok = models
    router = FixedRouter(["math", "medical"], {"math": 1.0}, rules=[("beta", {"medical": 1.0})])
    routed = _lls(BrainstacksLM(model, tok, mode="routed", base_fingerprint="b", stack_versions=VERSIONS,
                                router=router, domain_stacks=DOMAINS, batch_size=8))
    per_domain = {}
    for domain in ("math", "medical"):
        fixed = FixedRouter(["math", "medical"], {domain: 1.0})
        per_domain[domain] = _lls(BrainstacksLM(model, tok, mode="routed", base_fingerprint="b",
                                                stack_versions=VERSIONS, router=fixed, domain_stacks=DOMAINS))
    expected = torch.stack([per_domain["medical" if "beta" in c else "math"][i] for i, (c, _) in enumerate(PAIRS)])
    torch.testing.assert_close(routed, expected, rtol=1e-5, atol=1e-5)
    assert (per_domain["math"] - per_domain["medical"]).abs().max() > 1e-3


def test_routed_mode_needs_a_router(models):
    _, model, tok = models
    with pytest.raises(ValueError, match="router"):
        BrainstacksLM(model, tok, mode="routed", base_fingerprint="b", stack_versions=VERSIONS)


def _routed(model, tok, router, per_row: bool, batch_size: int = 8):
    return BrainstacksLM(model, tok, mode="routed", base_fingerprint="b", stack_versions=VERSIONS, router=router,
                         domain_stacks=DOMAINS, batch_size=batch_size, per_row_batches=per_row)


def test_routed_batches_carry_per_row_weights_and_match_per_request_scores(models):
    """Requests routed differently share full batches (per-row weights) with the scores of one call per route."""
    _, model, tok = models
    router = FixedRouter(["math", "medical"], {"math": 1.0},
                         rules=[("beta", {"medical": 1.0}), ("once", {"math": 0.4, "medical": 0.7})])
    pairs = PAIRS + [("Question: alpha and beta once?\nAnswer:", " maybe"), ("", " alpha")]
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, args, kw: forwards.append(
        (kw.get("input_ids", args[0] if args else None)).shape[0]), with_kwargs=True)
    try:
        batched = _lls(_routed(model, tok, router, per_row=True), pairs)
        n_batched, forwards[:] = list(forwards), []
        grouped = _lls(_routed(model, tok, router, per_row=False), pairs)
        n_grouped = list(forwards)
    finally:
        handle.remove()
    torch.testing.assert_close(batched, grouped, rtol=1e-5, atol=1e-5)
    assert n_batched == [len(pairs)], f"one forward of {len(pairs)} rows expected, got {n_batched}"
    assert len(n_grouped) == 3 and sum(n_grouped) == len(pairs)  # one HFLM call per distinct route

    gen = [Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}), i,
                    ("g", i, 1)) for i, (c, _) in enumerate(pairs[:5])]
    out_batched = _routed(model, tok, router, per_row=True).generate_until(copy.deepcopy(gen), disable_tqdm=True)
    out_grouped = _routed(model, tok, router, per_row=False).generate_until(copy.deepcopy(gen), disable_tqdm=True)
    assert out_batched == out_grouped


def test_a_row_plan_refuses_ambiguous_rows(models):
    """Equal token rows with different routes (HFLM computes equal rows once) fall back to one call per route."""
    from brainstacks_core.evaluation.row_plan import plan_loglikelihood

    _, model, tok = models
    lm = _routed(model, tok, FixedRouter(["math", "medical"], {"math": 1.0}), per_row=True)
    reqs = _requests([("Question: alpha", " beta gamma"), ("Question: alpha beta", " gamma")])
    ids = list(VERSIONS)
    same = plan_loglikelihood(lm, reqs, [{ids[0]: 1.0}, {ids[0]: 1.0}], ids)
    differ = plan_loglikelihood(lm, reqs, [{ids[0]: 1.0}, {ids[1]: 1.0}], ids)
    rows = {tuple((lm._encode_pair(*r.args)[0] + lm._encode_pair(*r.args)[1])[:-1]) for r in reqs}
    if len(rows) == 1:  # the tokenizer splits both pairs into the same row
        assert same is not None and differ is None
    else:
        assert same is not None and differ is not None


def test_the_profiles_max_gen_toks_overrides_the_task_yamls(tmp_path):
    """demo_gsm8k.yaml says 32 for standalone use; eval.max_gen_toks decides inside the pipeline."""
    for n in (7, 300):
        spec = task_spec("demo_gsm8k", EvalConfig(demo_items=4, max_gen_toks=n), Path("."), tmp_path)
        assert spec.config["generation_kwargs"]["max_gen_toks"] == n
