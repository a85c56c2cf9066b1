"""Throughput of the data path on the real shared data (``configs/shared.yaml``, 19,282 rows).

1. The whole ``prepare`` in-process, on a fresh artifact folder: read and normalise
   every source, strip chat tokens, validate, keyword and benchmark decontamination,
   dedup, cap, split, parquet writes, catalog registration. Reported as rows/s of
   wall time and rows per CPU-second (the process's CPU time, all threads: the
   "per core" figure, which a busy machine does not distort as much as wall time).
   Target: >= 2,000 rows/s per core.
2. The row processing (normalise -> validate -> strip -> validate -> keyword step ->
   validate) against a naive per-row, per-pattern, per-keyword Python loop applying
   the same rules (distinct keywords, exact-case entries, one signal per ``a|b``
   entry, source priors), in one run. Raw rows are read once beforehand for both.
   Target: >= 5x.

Run: .venv/bin/python benchmarks/bench_data.py
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from brainstacks_core.data.formats import FormatError, get_adapter  # noqa: E402
from brainstacks_core.data.pipeline import prepare_all  # noqa: E402
from brainstacks_core.data.sources import RECORD_COLUMNS, read_raw, record_id  # noqa: E402
from brainstacks_core.data.steps import identify, keyword_step, mixed_sources, strip_records  # noqa: E402
from brainstacks_core.data.text_cleaning import AMBIGUOUS_PATTERNS, TEMPLATE_PATTERNS  # noqa: E402
from brainstacks_core.profile import load_profile  # noqa: E402
from data_contracts import DecontaminatedRecords, NormalisedRecords, StrippedRecords, validate_or_quarantine  # noqa: E402

SHARED = Path(os.environ.get("BRAINSTACKS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_raw(tmp: Path):
    profile = load_profile(ROOT / "configs" / "shared.yaml", artifact_root=tmp)
    cfg = profile.data
    work = []
    for domain in cfg.domains:
        for spec in cfg.sources[domain]:
            ident = identify(spec, cfg, profile.store)
            adapter = get_adapter(spec.format)
            raw = read_raw(Path(ident.path), adapter.reader, spec.loader, profile.store / "cache")
            work.append((domain, ident, adapter, raw))
    return cfg, work


def normalise(work) -> pd.DataFrame:
    out = []
    for domain, ident, adapter, raw in work:
        for row in raw:
            if row.data is None:
                continue
            try:
                system, prompt, response = adapter.to_triple(row.data)
            except FormatError:
                continue
            out.append((record_id(system, prompt, response), domain, ident.uri, ident.version, row.key,
                        prompt, response, system))
    return pd.DataFrame.from_records(out, columns=RECORD_COLUMNS)


def fast(cfg, records: pd.DataFrame) -> int:
    df, _ = validate_or_quarantine(records, NormalisedRecords, "normalise")
    df, _ = strip_records(df, cfg.max_chars)
    df, _ = validate_or_quarantine(df, StrippedRecords, "strip")
    kept, _, _, _ = keyword_step(df, cfg)
    kept, _ = validate_or_quarantine(kept, DecontaminatedRecords, "decontaminate")
    return len(kept)


def naive(cfg, records: pd.DataFrame) -> int:
    patterns = [rx.replace("?P<role>", "") for _, _, rx in TEMPLATE_PATTERNS] + [rx for _, rx in AMBIGUOUS_PATTERNS]
    markers = [rx.replace("?P<role>", "") for _, _, rx in TEMPLATE_PATTERNS]
    # per domain: entries, each a list of alternatives (regex, exact case?)
    lex = {d: [[(re.escape(a[1:] if a.startswith("=") else a.lower()), a.startswith("=")) for a in e.split("|")]
                for e in ws] for d, ws in cfg.lexicons.items()}
    mixed = mixed_sources(cfg)
    kept = 0
    for row in records.itertuples(index=False):
        fields = {"prompt": row.prompt, "response": row.response, "system": row.system}
        if any(not isinstance(v, str) or not v.strip() for k, v in fields.items() if k != "system"):
            continue
        if any(isinstance(v, str) and len(v) > cfg.max_chars for v in fields.values()):
            continue
        for k, v in fields.items():  # strip: every pattern on every field
            if not isinstance(v, str):
                continue
            if any(re.search(m, v) for m in markers):
                for p in patterns:
                    v = re.sub(p, "\n", v)
                fields[k] = v.strip()
        if not fields["prompt"].strip() or not fields["response"].strip():
            continue
        text = fields["prompt"] + "\n" + fields["response"]
        low = text.lower()
        scores = {d: sum(any(re.search(rf"(?<![A-Za-z0-9_#+]){w}(?![A-Za-z0-9_#+])", text if cased else low)
                             for w, cased in alts) for alts in entries)
                  for d, entries in lex.items()}
        own = scores.get(row.domain, 0)
        target, best = max(((d, s) for d, s in scores.items() if d != row.domain), key=lambda x: x[1],
                           default=(None, 0))
        need = cfg.min_score if row.source_uri in mixed else max(cfg.min_score, cfg.single_domain_min_score)
        if best >= need and best >= own + cfg.margin and target not in cfg.domains:
            continue  # dropped: belongs to a domain outside the run (moves stay kept)
        if not re.fullmatch(r"[0-9a-f]{16}", record_id(fields["system"], fields["prompt"], fields["response"])):
            continue
        kept += 1
    return kept


def whole_prepare(root: Path) -> tuple[int, float, float, dict]:
    """``prepare_all`` on the shared profile in a fresh folder: rows in, wall s, CPU s, per-domain counts."""
    profile = load_profile(ROOT / "configs" / "shared.yaml", artifact_root=root)
    t0, c0 = time.perf_counter(), time.process_time()
    res = prepare_all(profile.context, profile.data)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return sum(p.counts["in"] for p in res.values()), wall, cpu, {d: p.counts for d, p in res.items()}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    if not SHARED.is_dir():
        print(f"shared data absent at {SHARED}; nothing to benchmark")
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        n_in, wall, cpu, counts = whole_prepare(Path(tmp) / "whole")
    print(f"whole prepare (shared profile, fresh folder): {n_in} rows in {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"  {n_in / wall:9.0f} rows/s wall   {n_in / cpu:9.0f} rows/s per core (CPU time)   (target >= 2,000)")
    for d, c in counts.items():
        print(f"  {d:<10} in {c['in']:>5}  train {c['train']:>5}  val {c['val']:>4}  test {c['test']:>4}  "
              f"router {c['router']:>4}  moved in/out {c['moved_in']}/{c['moved_out']}  quarantined "
              f"{c['quarantined']}  dropped {sum(v for k, v in c.items() if k.startswith('dropped_'))}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, work = load_raw(Path(tmp))
        n = sum(len(raw) for *_, raw in work)
        t0 = time.perf_counter()
        records = normalise(work)
        t_norm = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept_fast = fast(cfg, records)
        t_fast = time.perf_counter() - t0 + t_norm
        t0 = time.perf_counter()
        kept_naive = naive(cfg, records)
        t_naive = time.perf_counter() - t0 + t_norm
    print(f"rows: {n} raw, {len(records)} normalised; lexicon entries: {sum(map(len, cfg.lexicons.values()))} "
          f"in {len(cfg.lexicons)} domains; template patterns: {len(TEMPLATE_PATTERNS)}")
    print(f"row processing (project) : {t_fast:7.2f} s  {n / t_fast:9.0f} rows/s  ({kept_fast} rows kept)")
    print(f"naive per-row loop       : {t_naive:7.2f} s  {n / t_naive:9.0f} rows/s  ({kept_naive} rows pass)")
    print(f"speed-up                 : {t_naive / t_fast:7.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
