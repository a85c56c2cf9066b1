"""One training run per GPU: a Prefect global concurrency limit held while a flow trains on CUDA.

Create the limit once per server, with as many slots as there are GPUs behind the
``gpu`` pool (README, "GPU worker")::

    prefect gcl create gpu --limit 1

Every flow that loads a base on CUDA (training, routing, evaluation, Experiment 1) wraps that
work in :func:`gpu_slot`: a run that finds every slot
taken waits (its lease is renewed while it trains, and released when it ends or its
process dies). No CUDA device (CPU workers, tests): no slot is taken. A limit that
does not exist is not an error (``strict=False``): the run proceeds unthrottled.
The limit's name is ``BRAINSTACKS_GPU_LIMIT`` (default ``gpu``; empty disables it).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

from prefect.concurrency.sync import concurrency
from prefect.logging import get_logger


_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("brainstacks_gpu_slots", default=frozenset())


@contextlib.contextmanager
def gpu_slot(name: str | None = None, require_cuda: bool = True) -> Iterator[str | None]:
    """Hold one slot of the global concurrency limit ``name`` while the block runs on a GPU.

    Args:
        name: limit name (default: ``$BRAINSTACKS_GPU_LIMIT`` or ``gpu``; ``""``: no limit).
        require_cuda: take a slot only when ``torch.cuda.is_available()``.

    Re-entrant: a flow that already holds the slot (the pipeline around Experiment 1, a
    subflow of a flow that holds it) does not ask again, which would wait for itself at a
    limit of 1; another thread or process still waits.

    Yields:
        The limit name held, or None when no slot was taken.
    """
    name = os.environ.get("BRAINSTACKS_GPU_LIMIT", "gpu") if name is None else name
    if require_cuda:
        import torch

        if not torch.cuda.is_available():
            name = ""
    if not name:
        yield None
        return
    if name in _HELD.get():  # this flow (or the flow around it) holds it already
        yield name
        return
    get_logger("brainstacks.gpu").info("waiting for a slot of global concurrency limit %r (one run per GPU)", name)
    with concurrency(name, occupy=1, strict=False):
        token = _HELD.set(_HELD.get() | {name})
        try:
            yield name
        finally:
            _HELD.reset(token)
