"""How evaluation calls lm-eval's ``evaluator.evaluate``: seeded few-shot sampling, quiet under our own bar.

What belongs here: the small adjustments ``simple_evaluate`` would have made
(:func:`seeded`) and output hygiene while our progress bar runs
(:func:`quiet_harness`). No scoring logic: that is the harness's.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def quiet_harness(enabled: bool = True) -> Iterator[None]:
    """Under our own progress bar: hide the harness's per-task "building contexts" bars and its
    warnings about a model passed as an instance (restored after the block)."""
    if not enabled:
        yield
        return
    from functools import partial

    import lm_eval.api.task as harness_task

    logger = logging.getLogger("lm_eval")
    bar, level = harness_task.tqdm, logger.level
    harness_task.tqdm = partial(bar, disable=True)
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        harness_task.tqdm = bar
        logger.setLevel(level)


def seeded(task_dict: dict) -> dict:
    """Fix each task's few-shot sampler to the harness's default seed (what ``simple_evaluate`` does).

    ``evaluator.evaluate`` alone leaves the sampler unseeded: GSM8K's five shots would
    differ per run, and so would its contexts, its scores and its cache keys.
    """
    from lm_eval.defaults import DEFAULT_OTHER_SEED

    for task in task_dict.values():
        if hasattr(task, "set_fewshot_seed"):
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
        elif isinstance(task, dict):
            seeded(task)
    return task_dict
