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
