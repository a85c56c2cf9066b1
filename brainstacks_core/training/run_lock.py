"""One writer per run folder: an exclusive ``fcntl`` lock on ``<folder>/.lock``.

Whatever starts training (a Prefect trigger, a worker retry, a person at the CLI),
a run folder has at most one writer. A second request either waits for the lock
(``on_busy="wait"``, with a log line naming the holder) or is skipped
(``on_busy="skip"``: :class:`RunBusyError`). The lock is released by the kernel when
the holder dies (even ``kill -9``), so a crashed run never blocks the next one.
The lock file holds the holder's pid, host and start time (diagnostics only; the
lock itself is the ``flock``). Nothing is buffered: the file is a few bytes.

With a shared catalog (PostgreSQL, several hosts) the lock is instead a PostgreSQL
advisory lock on a session held for the ``with`` block, named by ``key`` (the same on
every host, e.g. ``training/main``): the ``with`` block then yields the
:class:`~brainstacks_core.lineage.pg_backend.PgLease` whose fencing ``epoch`` the
writer publishes under (``catalog.fenced(lease)``). A holder whose session dies
(``kill -9``, a lost host) releases it: the server closes the session.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Literal

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunBusyError(RuntimeError):
    """Another process holds the run folder's lock and the request was told to skip."""


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def _advisory_lock(catalog: Any, key: str, on_busy: str, timeout_s: float | None, poll_s: float,
                   what: str) -> Iterator[Any]:
    start, announced = time.monotonic(), False
    while True:
        lease = catalog.try_lease(key)
        if lease is not None:
            break
        holder = catalog.lock_holder(key)
        where = f"advisory lock {key} in {catalog.location}"
        if on_busy == "skip":
            raise RunBusyError(f"{what} is being written by {holder} ({where}); this request is skipped "
                               "(on_busy=skip)")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise RunBusyError(f"{what}: still locked by {holder} after {timeout_s:.0f} s ({where})")
        if not announced:
            log.warning("%s is being written by %s (%s); waiting for it to finish", what, holder, where)
            announced = True
        time.sleep(poll_s)
    if announced:
        log.info("%s: lock acquired after %.1f s (epoch %d)", what, time.monotonic() - start, lease.epoch)
    try:
        yield lease
    finally:
        lease.release()


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], on_busy: Literal["wait", "skip"] = "wait",
             timeout_s: float | None = None, poll_s: float = 0.5, what: str = "run", *,
             catalog: Any = None, key: str | None = None) -> Iterator[Any]:
    """Hold the exclusive lock on ``folder/.lock`` (or, with a shared catalog, its advisory lock ``key``).

    Args:
        folder: The run folder (created if missing).
        on_busy: ``"wait"`` blocks until the holder finishes; ``"skip"`` raises
            :class:`RunBusyError` at once.
        timeout_s: With ``"wait"``, give up after this many seconds (``RunBusyError``);
            None waits for as long as it takes.
        poll_s: Seconds between attempts while waiting.
        what: What is locked, for the log lines (e.g. ``"run demo/main"``).
        catalog: The profile's ``Catalog``; when it is shared (PostgreSQL) the lock is its advisory lock.
        key: The lock's name in a shared catalog, the same on every host (default ``what``).

    Yields:
        The lock file's path, or with a shared catalog the ``PgLease`` (``key``, fencing ``epoch``).
    """
    if catalog is not None and getattr(catalog, "shared", False):
        with _advisory_lock(catalog, key or what, on_busy, timeout_s, poll_s, what) as lease:
            yield lease
        return
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start, announced = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if on_busy == "skip":
                    raise RunBusyError(f"{what} is being written by {holder} (lock {path}); this request is "
                                       f"skipped (on_busy=skip)") from None
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise RunBusyError(f"{what}: still locked by {holder} after {timeout_s:.0f} s (lock {path})") \
                        from None
                if not announced:
                    log.warning("%s is being written by %s (lock %s); waiting for it to finish", what, holder, path)
                    announced = True
                time.sleep(poll_s)
        if announced:
            log.info("%s: lock acquired after %.1f s", what, time.monotonic() - start)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
