"""How evaluation drives lm-eval (issue 19): one task dict per task and call, quiet_harness scoped per thread.

* ``evaluate_model`` builds each task's dict once per call, not once per mode, and every
  mode still sees the same (seeded) few-shot contexts;
* ``quiet_harness`` hides lm-eval's lines and bars only in the thread inside the block:
  another thread's lm-eval warnings and bars show, other loggers are untouched, and
  whatever order overlapping blocks close in, lm-eval's logger and ``tqdm`` come back as
  they were.
"""

from __future__ import annotations

import logging
import threading

import lm_eval.api.task as harness_task
import lm_eval.tasks
from eval_helpers import VERSIONS, stacked
from test_eval_cache import _gsm8k_files

from brainstacks_core.evaluation.config import EvalConfig
from brainstacks_core.evaluation.harness import quiet_harness
from brainstacks_core.evaluation.model import BrainstacksLM
from brainstacks_core.evaluation.run import evaluate_model
from brainstacks_core.lineage.catalog import Catalog


def test_task_dict_built_once_per_call_and_every_mode_sees_the_same_shots(tmp_path, monkeypatch):
    _, model, tok = stacked()
    built, contexts = [], {}
    real_build = lm_eval.tasks.get_task_dict
    monkeypatch.setattr(lm_eval.tasks, "get_task_dict", lambda *a, **kw: built.append(1) or real_build(*a, **kw))
    real_gen = BrainstacksLM.generate_until

    def spy(self, requests, disable_tqdm=False):
        contexts.setdefault(self.mode, []).extend(r.args[0] for r in requests)
        return real_gen(self, requests, disable_tqdm)

    monkeypatch.setattr(BrainstacksLM, "generate_until", spy)
    cfg = EvalConfig(tasks=("gsm8k",), modes=("base", "ungated"), max_gen_toks=4, bootstrap_iters=10)
    out = evaluate_model(model, tok, cfg, profile_name="t", run_name="r", store=tmp_path / "store",
                         data_dir=_gsm8k_files(tmp_path), base_fingerprint="b", stack_versions=VERSIONS,
                         catalog=Catalog(tmp_path / "catalog.duckdb"), progress=False)
    assert len(built) == 1  # one task, two modes: one build
    assert out["per_mode"]["base"]["computed"] == out["per_mode"]["ungated"]["computed"] == 5
    assert len(contexts["base"]) == 5 and contexts["base"] == contexts["ungated"]  # same 5-shot contexts
    assert contexts["base"][0].count("####") == 5


def _emit(name: str, msg: str) -> None:
    logging.getLogger(name).warning(msg)


def test_quiet_harness_is_scoped_to_its_thread_and_restored(caplog):
    import lm_eval.evaluator  # noqa: F401 - the harness's loggers exist, as when evaluate_model runs

    logger = logging.getLogger("lm_eval")
    level, filters, bar = logger.level, list(logger.filters), harness_task.tqdm
    inside, go_on, other_done = threading.Event(), threading.Event(), threading.Event()
    seen_bars = {}

    def quiet_thread():
        with quiet_harness():
            _emit("lm_eval.api.task", "quiet-thread harness line")
            _emit("brainstacks_core.evaluation", "quiet-thread own line")
            seen_bars["quiet"] = harness_task.tqdm([1, 2]).disable
            inside.set()
            go_on.wait(10)

    def loud_thread():  # runs while the quiet block is open in the other thread
        inside.wait(10)
        _emit("lm_eval.api.task", "loud-thread harness line")
        _emit("lm_eval", "loud-thread top line")
        seen_bars["loud"] = harness_task.tqdm([1, 2]).disable
        other_done.set()

    with caplog.at_level(logging.INFO):
        threads = [threading.Thread(target=quiet_thread), threading.Thread(target=loud_thread)]
        for t in threads:
            t.start()
        other_done.wait(10)
        go_on.set()
        for t in threads:
            t.join(10)
    lines = [r.getMessage() for r in caplog.records]
    assert "quiet-thread harness line" not in lines
    assert {"quiet-thread own line", "loud-thread harness line", "loud-thread top line"} <= set(lines)
    assert seen_bars == {"quiet": True, "loud": False}
    assert (logger.level, logger.filters, harness_task.tqdm) == (level, filters, bar)


def test_overlapping_quiet_blocks_closing_out_of_order_restore_everything():
    import lm_eval.evaluator  # noqa: F401

    logger = logging.getLogger("lm_eval")
    child = logging.getLogger("lm_eval.api.task")
    before = (logger.level, list(logger.filters), list(child.filters), harness_task.tqdm)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():  # enters first, leaves first
        with quiet_harness():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():  # enters second, leaves last
        a_in.wait(10)
        with quiet_harness():
            b_in.set()
            a_out.wait(10)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert (logger.level, list(logger.filters), list(child.filters), harness_task.tqdm) == before
    with quiet_harness(enabled=False):  # off: nothing installed
        assert harness_task.tqdm is before[3]
