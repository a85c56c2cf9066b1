"""Evaluation fan-out (issue 20 item 4): shards of (task, mode, document range) units fill the score cache
with the one-process run's keys; the parent computes nothing and writes the same results; on a real Dask
cluster a worker killed mid-evaluation loses at most K forwards and leaves no duplicate."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from dask_kill import kill_busy_worker_when
from eval_helpers import VERSIONS, stacked
from lm_eval.api.model import LM
from test_eval_cache import _gsm8k_files
from test_eval_flow import _profile as eval_profile

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.evaluation.shards import doc_range, evaluation_is_current, run_eval_shard
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile
from brainstacks_core.training.run import train_profile

K, B = 2, 4  # eval.flush_forwards, eval.batch_size


def _keys(cat: Catalog, kind: str | None = None) -> list[str]:
    where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
    return [r[0] for r in cat._query(f"SELECT key FROM eval_scores {where}", params)]


def _close(a, b, path: str = "") -> None:
    """``a == b`` with floats equal to 1e-6 (recursively), naming the first path that differs."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}/{i}")
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The evaluation tests' tiny two-domain profile, trained, its meta-router trained, 1-shot demo_math
    (each document's shots come from one seeded random stream), the paper protocol beside lm-eval's,
    K = 2, batch 4, eval.shards 2; the catalog as it is before any evaluation is kept beside it
    (``trained.duckdb``)."""
    from brainstacks_core.routing.run import route_profile

    tmp = tmp_path_factory.mktemp("evalfanout")
    cfg = eval_profile(tmp)
    raw = yaml.safe_load(cfg.read_text())
    raw["eval"].update(num_fewshot={"demo_math": 1}, max_gen_toks=8, flush_forwards=K, batch_size=B, shards=2,
                       protocols=["lm-eval", "paper"],
                       paper={"tasks": ["demo_math"], "modes": ["base", "routed"], "limit": 4})
    cfg.write_text(yaml.safe_dump(raw))
    profile = load_profile(cfg, artifact_root=tmp / "art")
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    train_profile(profile.training_setup, catalog=cat)
    route_profile(profile.routing_setup, "main", cat, progress=False)
    shutil.copy(profile.catalog_path, tmp / "trained.duckdb")
    return cfg, profile, tmp


def _cold(profile, tmp: Path) -> Catalog:
    """The trained catalog with no evaluation in it, and no evaluation files in the store."""
    shutil.copy(tmp / "trained.duckdb", profile.catalog_path)
    shutil.rmtree(profile.context.store / "eval", ignore_errors=True)
    return Catalog(profile.catalog_path)


def test_document_ranges_partition_every_task():
    for n in range(0, 23):
        for shards in range(1, 6):
            ranges = [doc_range(n, s, shards) for s in range(shards)]
            assert [i for a, b in ranges for i in range(a, b)] == list(range(n))  # all, once, in order
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1  # balanced


class Recorder(LM):
    """A harness model that answers nothing useful and records every request it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self.seen += [("loglikelihood", r.doc_id, r.args) for r in requests]
        return [(0.0, False) for _ in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.seen += [("generate_until", r.doc_id, r.args[0], json.dumps(r.args[1], sort_keys=True)) for r in requests]
        return ["" for _ in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_shard_requests_are_the_one_process_requests_few_shot_included(tmp_path):
    """GSM8K 5-shot (shots from its train split) and demo_math 2-shot (from its test split): the shards'
    requests, contexts with their shots included, are exactly the one-process evaluation's, split with no
    overlap; lm-eval's own ``samples=`` slicing would give other contexts (one random stream of shots)."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager, get_task_dict

    from brainstacks_core.evaluation.config import EvalConfig
    from brainstacks_core.evaluation.harness import seeded
    from brainstacks_core.evaluation.shards import owned, score_requests, task_requests
    from brainstacks_core.evaluation.suite import task_specs

    cfg = EvalConfig(tasks=("gsm8k", "demo_math"), num_fewshot={"demo_math": 2}, demo_items=9, max_gen_toks=4)
    manager = TaskManager(include_defaults=False)
    for spec in task_specs(cfg, cfg.tasks, _gsm8k_files(tmp_path), tmp_path / "converted"):
        whole = Recorder()
        evaluator.evaluate(whole, seeded(get_task_dict([spec.config], manager)), limit=7, bootstrap_iters=0)
        parts = []
        for shard in range(3):
            lm = Recorder()
            mine, (start, stop) = owned(task_requests(spec, 7, manager), shard, 3)
            score_requests(lm, mine)
            assert {r[1] for r in lm.seen} == set(range(start, stop)), spec.name
            parts.append(lm.seen)
        assert sorted(r for p in parts for r in p) == sorted(whole.seen), spec.name  # the same, each once
        sliced = Recorder()  # the naive split: lm-eval builds only shard 2's documents
        docs = sorted({r[1] for r in parts[2]})
        evaluator.evaluate(sliced, seeded(get_task_dict([spec.config], manager)), samples={spec.name: docs},
                           bootstrap_iters=0)
        assert sorted(sliced.seen) != sorted(parts[2]), spec.name  # other shots: other contexts, other keys


def test_scores_are_flushed_every_k_forwards_and_a_crash_loses_at_most_k(tmp_path, monkeypatch):
    """``flush_forwards`` K: each write carries the rows of at most K forwards; a call that dies after two
    flushes leaves them in the catalog, and the retry computes only the rest, with the same values."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from brainstacks_core.evaluation.config import EvalConfig
    from brainstacks_core.evaluation.model import BrainstacksLM
    from brainstacks_core.evaluation.shards import task_requests
    from brainstacks_core.evaluation.suite import task_specs

    _, model, tok = stacked()
    spec = task_specs(EvalConfig(demo_items=12), ["demo_math"], tmp_path, tmp_path / "converted")[0]
    reqs = task_requests(spec, None, TaskManager(include_defaults=False))  # 12 docs x 4 choices
    kw = dict(mode="ungated", base_fingerprint="b", stack_versions=VERSIONS, batch_size=B, request_bars=False)
    plain = BrainstacksLM(model, tok, catalog=Catalog(tmp_path / "plain.duckdb"), **kw).loglikelihood(reqs)

    CountingCatalog.writes = []
    cat = CountingCatalog(tmp_path / "flushed.duckdb")
    real, calls = HFLM.loglikelihood, []

    def dies_on_the_third_chunk(self, requests, disable_tqdm=False):
        calls.append(len(requests))
        if len(calls) == 3:
            raise RuntimeError("worker killed")
        return real(self, requests, disable_tqdm=disable_tqdm)

    monkeypatch.setattr(HFLM, "loglikelihood", dies_on_the_third_chunk)
    with pytest.raises(RuntimeError):
        BrainstacksLM(model, tok, catalog=cat, flush_forwards=K, **kw).loglikelihood(reqs)
    assert calls[:2] == [K * B, K * B] and CountingCatalog.writes == [K * B, K * B]  # two flushes survive
    assert len(_keys(cat)) == 2 * K * B
    monkeypatch.setattr(HFLM, "loglikelihood", real)
    lm = BrainstacksLM(model, tok, catalog=cat, flush_forwards=K, **kw)
    again = lm.loglikelihood(reqs)
    assert (lm.computed, lm.reused) == (len(reqs) - 2 * K * B, 2 * K * B)
    assert max(CountingCatalog.writes) <= K * B and lm.forwards <= K * lm.writes
    for (a, x), (b, y) in zip(again, plain):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) and x == y


class CountingCatalog(Catalog):
    """A real catalog that remembers how many score rows (not routing rows) each write carried."""

    writes: list[int] = []

    def record_eval_scores(self, rows, models=None):
        type(self).writes.append(int((rows["kind"] != "route").sum()))
        super().record_eval_scores(rows, models)


@pytest.mark.slow
def test_shards_fill_the_cache_and_the_parent_computes_nothing(trained):
    from brainstacks_core.evaluation.run import evaluate_profile

    cfg, profile, tmp = trained
    setup = profile.eval_setup
    cat = _cold(profile, tmp)
    before = set(_keys(cat))
    ref_path = tmp / "reference.duckdb"
    shutil.copy(profile.catalog_path, ref_path)
    ref = Catalog(ref_path)
    one = evaluate_profile(setup, "main", ref, progress=False)  # the one-process evaluation
    assert list(one["protocols"]) == ["lm-eval", "paper"]
    assert set(one["per_mode"]) == {"base", "ungated", "routed"} and not one["skipped"]
    ref_results = {p: Path(o["results"]).read_bytes() for p, o in one["protocols"].items()}
    ref_keys = set(_keys(ref)) - before
    computed = sum(o["computed"] for o in one["protocols"].values())
    reused = sum(o["reused"] for o in one["protocols"].values())
    assert computed == len(set(_keys(ref, "loglikelihood")) | set(_keys(ref, "generate_until"))) > 0

    CountingCatalog.writes = []
    counting = CountingCatalog(profile.catalog_path)
    outs = [run_eval_shard(setup, "main", s, 2, counting) for s in range(2)]
    assert all(o["computed"] > 0 for o in outs)
    assert sum(o["computed"] for o in outs) == computed  # the shards split the requests, no overlap
    assert sum(o["reused"] for o in outs) == reused
    assert set(_keys(cat)) - before == ref_keys  # the same cache keys as the one-process run (routing too)
    units = sorted(tuple(u) for o in outs for u in o["units"])
    assert len(units) == 2 * (3 * 2 + 2 * 1)  # 2 shards x (lm-eval: 3 modes x 2 tasks; paper: 2 x 1)
    assert max(CountingCatalog.writes) <= K * B  # at most K forwards of rows per write
    assert sum(o["forwards"] for o in outs) <= sum(o["writes"] for o in outs) * K
    assert evaluation_is_current(setup, "main", ref) and not evaluation_is_current(setup, "main", cat)

    out = evaluate_profile(setup, "main", cat, progress=False)
    for p, o in out["protocols"].items():
        assert o["computed"] == 0 and o["version"] == one["protocols"][p]["version"]
        assert all(c["computed"] == 0 and c.get("routes_computed", 0) == 0 for c in o["per_mode"].values())
        got = Path(o["results"]).read_bytes()  # the same results (to 1e-6; byte-equal when deterministic)
        _close(json.loads(got), json.loads(ref_results[p]))
    assert sum(o["reused"] for o in out["protocols"].values()) == computed + reused
    assert evaluation_is_current(setup, "main", cat)


@pytest.mark.slow
def test_evaluate_flow_fans_out_on_dask_and_survives_a_killed_worker(trained, harness, monkeypatch):
    from distributed import Client, LocalCluster

    from flows.evaluate import evaluate

    cfg, profile, tmp = trained
    cat = _cold(profile, tmp)
    before = set(_keys(cat))
    ref_path = tmp / "reference-kill.duckdb"
    shutil.copy(profile.catalog_path, ref_path)
    expected = run_eval_shard(profile.eval_setup, "main", 0, 1, Catalog(ref_path))
    ref_keys = set(_keys(Catalog(ref_path))) - before

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        monkeypatch.setenv("BRAINSTACKS_DASK_ADDRESS", cluster.scheduler_address)
        killer, killed = kill_busy_worker_when(client, lambda: len(_keys(cat)) - len(before), len(ref_keys),
                                               poll_s=0.2)
        out = evaluate(config_path=str(cfg), artifact_root=str(tmp / "art"))
        killer.join(timeout=5)

    assert killed, "no worker was killed mid-evaluation"
    keys = _keys(cat)
    assert len(keys) == len(set(keys))  # no duplicate key
    assert set(keys) - before == ref_keys  # every score (and routing decision) once
    assert len(keys) - len(before) == len(ref_keys) and expected["computed"] > 0
    for o in out["protocols"].values():
        assert o["computed"] == 0 and all(c["routes_computed"] == 0 for c in o["per_mode"].values())
