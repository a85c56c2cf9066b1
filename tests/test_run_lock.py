"""One writer per run folder: the lock (wait / skip), two concurrent runs, and repairing a broken folder."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from brainstacks_core.files import sha256_file
from brainstacks_core.training.repair import repair_run
from brainstacks_core.training.run_lock import RunBusyError, run_lock

WORKER = [sys.executable, str(Path(__file__).parent / "continual_worker.py")]


def test_second_request_waits_or_is_skipped(tmp_path, caplog):
    held, release = threading.Event(), threading.Event()

    def holder():
        with run_lock(tmp_path, what="run t/main"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    with pytest.raises(RunBusyError, match="skipped"):
        with run_lock(tmp_path, "skip", what="run t/main"):
            pass
    with pytest.raises(RunBusyError, match="still locked"):
        with run_lock(tmp_path, "wait", timeout_s=0.3, poll_s=0.05, what="run t/main"):
            pass
    threading.Timer(0.5, release.set).start()
    t0 = time.monotonic()
    with caplog.at_level("WARNING"), run_lock(tmp_path, "wait", poll_s=0.05, what="run t/main"):
        waited = time.monotonic() - t0
    t.join()
    assert waited >= 0.3
    assert any("waiting for it to finish" in r.message and "pid" in r.message for r in caplog.records)


def _all_match(manifest: dict) -> list[str]:
    return [r["file"] for d in manifest["domains"].values() for r in d["rounds"]
            if r["status"] == "frozen" and sha256_file(r["file"]) != r["file_sha256"]]


@pytest.mark.slow
def test_two_concurrent_runs_end_cleanly_and_repair_fixes_a_broken_folder(tmp_path):
    run_dir = tmp_path / "run"
    procs = [subprocess.Popen([*WORKER, str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0 and "WORKER DONE" in out, err[-3000:]
    assert any("waiting for it to finish" in err for _, err in outs), "the second run did not wait for the lock"
    m = json.loads((run_dir / "manifest.json").read_text())
    assert all(e["status"] == "done" for e in m["domains"].values())
    assert not _all_match(m), "a stack file differs from the manifest"
    for e in m["domains"].values():  # each round trained once: the waiting run resumed, retrained nothing
        assert [r["round"] for r in e["rounds"]] == list(range(1, len(e["rounds"]) + 1))

    # a stack file changed behind the run's back: the next run names the repair; repair drops it and resumes
    frozen = [r for r in m["domains"]["words"]["rounds"] if r["status"] == "frozen"]
    broken = frozen[-1]
    Path(broken["file"]).write_bytes(Path(broken["file"]).read_bytes()[:-8] + b"corrupt!")
    failed = subprocess.run([*WORKER, str(run_dir)], capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0 and "brainstacks repair" in failed.stderr and "inconsistent" in failed.stderr
    report = repair_run(run_dir)
    assert report["broken"][:2] == ("words", broken["round"]) and broken["stack_id"] in report["dropped"]
    assert repair_run(run_dir)["broken"] is None  # idempotent
    again = subprocess.run([*WORKER, str(run_dir)], capture_output=True, text=True, timeout=600)
    assert "WORKER DONE" in again.stdout, again.stderr[-3000:]
    fixed = json.loads((run_dir / "manifest.json").read_text())
    assert fixed["domains"]["math"]["rounds"] == m["domains"]["math"]["rounds"]  # untouched
    assert fixed["domains"]["words"]["status"] == "done" and not _all_match(fixed)
    assert fixed["repairs"][0]["dropped"] == report["dropped"]
