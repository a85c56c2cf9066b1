"""SIGKILL one busy Dask worker mid-run, from a thread beside the run (the fan-out kill tests)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable


def kill_busy_worker_when(client, done: Callable[[], int], total: int, poll_s: float = 0.3,
                          timeout_s: float = 300) -> tuple[threading.Thread, dict]:
    """Start a thread that SIGKILLs a worker with a task in flight once ``0 < done() < total``.

    Returns:
        ``(thread, killed)``; ``killed`` gets ``pid`` and ``rows_at_kill`` when it fired.
    """
    killed: dict = {}

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n = done()
            busy = [w for w, tasks in client.processing().items() if tasks]
            if 0 < n < total and busy:
                pid = client.run(os.getpid)[busy[0]]
                killed.update(pid=pid, rows_at_kill=n)
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(poll_s)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed
