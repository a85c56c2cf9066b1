"""How evaluation calls lm-eval's ``evaluator.evaluate``: seeded few-shot sampling, quiet under our own bar.

What belongs here: the small adjustments ``simple_evaluate`` would have made
(:func:`seeded`) and output hygiene while our progress bar runs
(:func:`quiet_harness`). No scoring logic: that is the harness's.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from typing import Iterator

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("brainstacks_quiet_harness", default=False)
_install_lock = threading.Lock()
_users = 0  # quiet_harness blocks open in any thread; the hooks are installed while it is > 0
_saved: dict = {}


class _QuietFilter(logging.Filter):
    """Drops lm-eval records below ERROR emitted by a thread (context) inside :func:`quiet_harness`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_QUIET.get() and record.levelno < logging.ERROR)


class _QuietTqdm:
    """lm-eval's ``tqdm`` in ``lm_eval.api.task``: disabled only for callers inside :func:`quiet_harness`."""

    def __init__(self, real) -> None:
        self.real = real

    def __call__(self, *args, **kwargs):
        if _QUIET.get():
            kwargs["disable"] = True
        return self.real(*args, **kwargs)


_FILTER = _QuietFilter()


def _harness_loggers() -> list[logging.Logger]:
    """The ``lm_eval`` logger and every ``lm_eval.*`` logger that exists now (filters do not propagate)."""
    names = ["lm_eval", *(n for n in list(logging.root.manager.loggerDict) if n.startswith("lm_eval."))]
    return [lg for lg in (logging.getLogger(n) for n in names) if isinstance(lg, logging.Logger)]


def _install() -> None:
    import lm_eval.api.task as harness_task

    _saved["tqdm"] = harness_task.tqdm
    harness_task.tqdm = _QuietTqdm(harness_task.tqdm)
    _saved["loggers"] = _harness_loggers()
    for lg in _saved["loggers"]:
        lg.addFilter(_FILTER)


def _uninstall() -> None:
    import lm_eval.api.task as harness_task

    if isinstance(harness_task.tqdm, _QuietTqdm):  # someone else's patch on top of ours stays
        harness_task.tqdm = _saved.pop("tqdm")
    for lg in _saved.pop("loggers", []):
        lg.removeFilter(_FILTER)


@contextlib.contextmanager
def quiet_harness(enabled: bool = True) -> Iterator[None]:
    """Under our own progress bar: hide the harness's per-task "building contexts" bars and its
    info and warning lines (e.g. about a model passed as an instance) for this thread only.

    Scoped: only code running in the calling thread (its context) inside the block is
    quieted; another thread using lm-eval at the same time keeps its bars and its log
    lines, other loggers are never touched, and no logger level changes. The hooks
    (a filter on the ``lm_eval`` loggers, a wrapper around ``lm_eval.api.task.tqdm``)
    are installed when the first block in any thread opens and removed when the last
    one closes, whatever order threads leave in. lm-eval loggers first created inside
    the block are not filtered (their lines show).
    """
    if not enabled:
        yield
        return
    global _users
    with _install_lock:
        if _users == 0:
            _install()
        _users += 1
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)
        with _install_lock:
            _users -= 1
            if _users == 0:
                _uninstall()


def seeded(task_dict: dict) -> dict:
    """Fix each task's few-shot sampler to the harness's default seed (what ``simple_evaluate`` does).

    ``evaluator.evaluate`` alone leaves the sampler unseeded: GSM8K's five shots would
    differ per run, and so would its contexts, its scores and its cache keys. Call it
    again before each ``evaluate`` of a task dict that is reused (a sampler's state
    moves as it samples).
    """
    from lm_eval.defaults import DEFAULT_OTHER_SEED

    for task in task_dict.values():
        if hasattr(task, "set_fewshot_seed"):
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
        elif isinstance(task, dict):
            seeded(task)
    return task_dict
