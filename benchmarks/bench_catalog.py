"""Catalog write latency, DuckDB file vs PostgreSQL, at 1 / 4 / 8 concurrent writer processes.

Each writer process records ``--writes`` artifacts (one ``record_artifact`` each: an
insert, an input edge and an event in one transaction) as fast as it can; every
call's latency is kept. Reported per backend and writer count: p50 / p99 in ms and
the writes/s of all writers together, plus the PostgreSQL/DuckDB ratios of the same
run. The DuckDB file serialises writers on its file lock (retried with backoff);
PostgreSQL takes them concurrently. PostgreSQL is a throwaway local server
(tests/pg_server.py, fsync off), so its numbers are the catalog code's and the
protocol's cost, not a networked server's.

Run: .venv/bin/python benchmarks/bench_catalog.py [--writes 50] [--writers 1 4 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from brainstacks_core.lineage.catalog import Catalog  # noqa: E402


def _writer(args: tuple) -> tuple[list[float], float, float]:
    path, url, schema, wid, n = args
    cat = Catalog(path, url=url, pg_schema=schema) if url else Catalog(path, timeout_s=300)
    out, start = [], time.time()
    for i in range(n):
        t0 = time.perf_counter()
        cat.record_artifact(uri=f"stack://bench/w{wid}/{i}", version=f"v-{wid}-{i}", kind="stack", path=None,
                            sha256=None, code_version="c", config_hash="h", inputs=[f"v-{wid}-{i - 1}"],
                            metadata={"i": i}, run_ids={"flow_run_id": "bench"})
        out.append(time.perf_counter() - t0)
    return out, start, time.time()


def _run(path, url, schema, writers: int, n: int) -> dict:
    _writer((path, url, schema, "warm", 1))  # noqa  # schema created before the clock starts
    with mp.get_context("spawn").Pool(writers) as pool:
        parts = pool.map(_writer, [(path, url, schema, w, n) for w in range(writers)])
    lat = [x for part, _, _ in parts for x in part]
    wall = max(p[2] for p in parts) - min(p[1] for p in parts)  # first write to last, not process start-up
    lat.sort()
    return {"p50_ms": round(1e3 * statistics.median(lat), 2), "p99_ms": round(1e3 * lat[int(0.99 * (len(lat) - 1))], 2),
            "writes_per_s": round(len(lat) / wall, 1), "writes": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writes", type=int, default=50, help="record_artifact calls per writer process")
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8])
    args = ap.parse_args()
    from pg_server import PgServer

    out: dict = {"writes_per_writer": args.writes, "duckdb": {}, "postgres": {}, "ratio_postgres_over_duckdb": {}}
    with tempfile.TemporaryDirectory() as tmp, PgServer() as pg:
        for w in args.writers:
            out["duckdb"][w] = _run(str(Path(tmp) / f"c{w}.duckdb"), None, None, w, args.writes)
            out["postgres"][w] = _run(str(Path(tmp) / "unused"), pg.url, f"bs_bench_{w}", w, args.writes)
            d, p = out["duckdb"][w], out["postgres"][w]
            out["ratio_postgres_over_duckdb"][w] = {k: round(p[k] / d[k], 4) for k in ("p50_ms", "p99_ms",
                                                                                         "writes_per_s")}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
