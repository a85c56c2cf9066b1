"""A no-change re-run of ``brainstacks run`` against its first run, stage by stage.

    python benchmarks/bench_rerun.py                               # configs/demo.yaml, fresh store (minutes)
    python benchmarks/bench_rerun.py --store /tmp/fast-art         # reuse a store: its first run is skipped
    python benchmarks/bench_rerun.py --config PATH --reruns 2

Each run is ``brainstacks run --config C --artifact-root R`` in a subprocess (what
``make demo`` runs). The per-stage breakdown comes from the runs' own Prefect log
lines: the time from the previous logged event to each task's or flow's
``Finished in state`` line is charged to that task or flow (``startup`` is process
start to the first log line: imports and the ephemeral API). Prints wall and CPU
seconds per run, the stages, and the ratio re-run / first run. Not a test: no
timing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| \w+ +\| (.*)$")
FINISHED = re.compile(r"^(Task|Flow) run '([^']+)' - Finished in state")


def _stage(kind: str, name: str) -> str:
    return name.rsplit("-", 1)[0] if kind == "Task" else "flow overhead"


def run_once(config: str, store: str) -> dict:
    """One ``brainstacks run`` in a subprocess: wall, CPU, and seconds per stage from its log."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", config, "--artifact-root", store]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, wall0 = time.time(), time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    stages: dict[str, float] = defaultdict(float)
    day0 = time.strftime("%Y-%m-%d", time.localtime(t0))
    prev = t0
    for raw in (proc.stderr + "\n" + proc.stdout).splitlines():
        m = LINE.match(raw.strip().split("\r")[-1])
        if not m:
            continue
        h, mi, s, ms, msg = m.groups()
        ts = time.mktime(time.strptime(f"{day0} {h}:{mi}:{s}", "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
        if ts < t0 - 1:
            ts += 86400  # past midnight
        if prev == t0:
            stages["startup (imports, API)"] += ts - t0
            prev = ts
        f = FINISHED.match(msg)
        if f:
            stages[_stage(*f.groups())] += ts - prev
            prev = ts
    stages["after the last log line (report print)"] += t0 + wall - prev
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "stages": dict(stages)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml", help="profile (default: configs/demo.yaml)")
    ap.add_argument("--store", default=None, help="artifact root; reused (no first run) when it exists already")
    ap.add_argument("--reruns", type=int, default=1, help="no-change re-runs to time (default 1)")
    args = ap.parse_args(argv)
    store = args.store or f"/tmp/bench-rerun-{os.getpid()}"
    runs = []
    if not Path(store).exists():
        print(f"first run into {store} (minutes) ...", flush=True)
        runs.append(("first run", run_once(args.config, store)))
    for i in range(args.reruns):
        runs.append((f"re-run {i + 1}", run_once(args.config, store)))
    print(f"load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    names = sorted({s for _, r in runs for s in r["stages"]}, key=lambda s: -max(r["stages"].get(s, 0) for _, r in runs))
    print(f"{'stage':<40}" + "".join(f"{label:>14}" for label, _ in runs))
    for s in names:
        print(f"{s:<40}" + "".join(f"{r['stages'].get(s, 0.0):>13.1f}s" for _, r in runs))
    print(f"{'wall':<40}" + "".join(f"{r['wall']:>13.1f}s" for _, r in runs))
    print(f"{'cpu (user+sys)':<40}" + "".join(f"{r['cpu']:>13.1f}s" for _, r in runs))
    if runs[0][0] == "first run" and len(runs) > 1:
        print(f"re-run / first run (wall): {runs[-1][1]['wall'] / runs[0][1]['wall']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
