"""Rows/s of normalise + strip + decontaminate + validate on the real shared data.

The project path (vectorised pandera validation, one-pass keyword matcher, token
stripping only where a marker is present) against a naive per-row, per-pattern,
per-keyword Python loop doing the same work, in one run. Raw rows are read once
beforehand for both, so only the processing is timed. Target: >= 5x.

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
from brainstacks_core.data.sources import RECORD_COLUMNS, read_raw, record_id  # noqa: E402
from brainstacks_core.data.steps import identify, keyword_step, strip_records  # noqa: E402
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
    kept, _, _ = keyword_step(df, cfg)
    kept, _ = validate_or_quarantine(kept, DecontaminatedRecords, "decontaminate")
    return len(kept)


def naive(cfg, records: pd.DataFrame) -> int:
    patterns = [rx.replace("?P<role>", "") for _, _, rx in TEMPLATE_PATTERNS] + [rx for _, rx in AMBIGUOUS_PATTERNS]
    markers = [rx.replace("?P<role>", "") for _, _, rx in TEMPLATE_PATTERNS]
    lex = {d: [re.escape(w.lower()) for w in ws] for d, ws in cfg.lexicons.items()}
    kept = 0
    for row in records.itertuples(index=False):
        fields = {"prompt": row.prompt, "response": row.response, "system": row.system}
        if any(not isinstance(v, str) or not v.strip() for k, v in fields.items() if k != "system"):
            continue
        if any(v is not None and len(v) > cfg.max_chars for v in fields.values()):
            continue
        for k, v in fields.items():  # strip: every pattern on every field
            if v is None:
                continue
            if any(re.search(m, v) for m in markers):
                for p in patterns:
                    v = re.sub(p, "\n", v)
                fields[k] = v.strip()
        if not fields["prompt"].strip() or not fields["response"].strip():
            continue
        text = (fields["prompt"] + "\n" + fields["response"]).lower()
        scores = {d: sum(len(re.findall(rf"(?<![a-z0-9_#+]){w}(?![a-z0-9_#+])", text)) for w in ws)
                  for d, ws in lex.items()}
        own = scores.get(row.domain, 0)
        target, best = max(((d, s) for d, s in scores.items() if d != row.domain), key=lambda x: x[1],
                           default=(None, 0))
        if best >= cfg.min_score and best >= own + cfg.margin and target not in cfg.domains:
            continue  # dropped: belongs to a domain outside the run (moves stay kept)
        if not re.fullmatch(r"[0-9a-f]{16}", record_id(fields["system"], fields["prompt"], fields["response"])):
            continue
        kept += 1
    return kept


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    if not SHARED.is_dir():
        print(f"shared data absent at {SHARED}; nothing to benchmark")
        return
    import tempfile

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
    print(f"rows: {n} raw, {len(records)} normalised; lexicon keywords: {sum(map(len, cfg.lexicons.values()))} "
          f"in {len(cfg.lexicons)} domains; template patterns: {len(TEMPLATE_PATTERNS)}")
    print(f"pipeline (vectorised) : {t_fast:7.2f} s  {n / t_fast:9.0f} rows/s  ({kept_fast} rows kept)")
    print(f"naive per-row loop    : {t_naive:7.2f} s  {n / t_naive:9.0f} rows/s  ({kept_naive} rows pass)")
    print(f"speed-up              : {t_naive / t_fast:7.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
