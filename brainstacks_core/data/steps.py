"""The row-level work of each data-pipeline stage (called by ``data_pipeline``).

Kept apart from ``data_pipeline`` (which handles caching, files and lineage) so
that each function here is a pure frame-in, frame-out step that tests and the
benchmark can call directly.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brainstacks_core.data.benchmark_decontamination import NgramIndex, build_index, eval_texts, remove_contaminated
from brainstacks_core.data.config import DataConfig, SourceConfig
from brainstacks_core.data.decontamination import decontaminate
from brainstacks_core.data.sources import (
    QUARANTINE_COLUMNS,
    normalise_source,
    quarantine_row,
    record_id,
    source_identity,
)
from brainstacks_core.data.text_cleaning import (
    has_chat_tokens,
    parse_conversation,
    strip_chat_tokens,
    strip_chat_tokens_unconditional,
)
from brainstacks_core.files import sha256_file
from data_contracts import (
    DecontaminatedRecords,
    NormalisedRecords,
    SplitRecords,
    StrippedRecords,
    validate_or_quarantine,
)

DROPPED_COLUMNS = ["record_id", "domain", "source_uri", "source_version", "source_row_key", "kind", "reason"]


@dataclass(frozen=True)
class SourceIdent:
    """A source's identity: URI, version (revision / sha256), local path."""

    uri: str
    version: str
    path: str | None
    kind: str = "source"

    def as_dict(self) -> dict:
        """JSON form (manifest, stage meta)."""
        sha = self.version if self.path and not self.uri.startswith("hf://") else None
        return {"uri": self.uri, "version": self.version, "path": self.path, "kind": self.kind, "sha256": sha}


def identify(spec: SourceConfig, cfg: DataConfig, store: Path) -> SourceIdent:
    """Identity of a source (writes generated files if needed)."""
    uri, version, path = source_identity(spec, cfg, store)
    return SourceIdent(uri, version, str(path) if path else None)


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def strip_records(df: pd.DataFrame, max_chars: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strip chat tokens (or parse a whole templated conversation) and enforce ``max_chars``.

    Rows without template tokens are untouched. A row with an unambiguous marker
    (``[INST]``, ``<|im_start|>``, ...) in any field is templated as a whole, so its
    ambiguous tokens (``<s>``, ``</s>``) are removed from every field. A changed row
    gets a new ``record_id`` (the hash of what training will see).
    """
    df = df.copy()
    mask = [has_chat_tokens(p) or has_chat_tokens(r) or (s is not None and has_chat_tokens(s))
            for p, r, s in zip(df["prompt"], df["response"], df["system"])]
    for i in df.index[mask]:
        system, prompt, response = df.at[i, "system"], df.at[i, "prompt"], df.at[i, "response"]
        conv = parse_conversation(prompt) if not strip_chat_tokens(response).strip() else None
        if conv is not None and not conv.trailing:  # with trailing turns: strip tokens, keep every word
            system, prompt, response = conv.system or system, conv.prompt, conv.response
        else:  # the row is templated: ambiguous tokens (<s>, </s>) count in every field, not per field
            prompt, response = strip_chat_tokens_unconditional(prompt), strip_chat_tokens_unconditional(response)
            system = strip_chat_tokens_unconditional(system) if system is not None else None
        df.at[i, "system"], df.at[i, "prompt"], df.at[i, "response"] = system or None, prompt, response
        df.at[i, "record_id"] = record_id(system, prompt, response)
    too_long = pd.Series(False, index=df.index)
    bad = []
    for col in ("prompt", "response", "system"):
        lengths = df[col].fillna("").str.len()
        hit = (lengths > max_chars) & ~too_long
        for i in df.index[hit]:
            r = df.loc[i]
            bad.append(quarantine_row(r["domain"], "strip", r["source_uri"], r["source_version"], r["source_row_key"],
                                      r["record_id"], "max_chars", col, f"{lengths[i]} chars",
                                      f"{r['source_uri']}: {r['source_row_key']}: field {col!r} has {lengths[i]} "
                                      f"characters (> max_chars {max_chars})"))
        too_long |= hit
    return df[~too_long].reset_index(drop=True), pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)


def ingest(cfg: DataConfig, domain: str, store: Path, idents: list[SourceIdent]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Read, normalise, validate, strip, validate one domain's sources.

    Returns:
        ``(records, quarantine, n_in)`` with ``n_in == len(records) + len(quarantine)``.
    """
    cache = store / "cache" / "hf_datasets"
    batches = [normalise_source(spec, domain, cfg, store, cache, (i.uri, i.version, Path(i.path) if i.path else None))
               for spec, i in zip(cfg.sources[domain], idents)]
    n_in = sum(b.n_in for b in batches)
    records = _concat([b.records for b in batches], list(NormalisedRecords.to_schema().columns))
    quarantine = [b.quarantine for b in batches]
    records, q = validate_or_quarantine(records, NormalisedRecords, "normalise")
    quarantine.append(q)
    records, q = strip_records(records, cfg.max_chars)
    quarantine.append(q)
    records, q = validate_or_quarantine(records, StrippedRecords, "strip")
    quarantine.append(q)
    quarantine_df = _concat(quarantine, QUARANTINE_COLUMNS)
    assert n_in == len(records) + len(quarantine_df), (domain, n_in, len(records), len(quarantine_df))
    return records, quarantine_df, n_in


def keyword_step(records: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Keyword decontamination across every domain of the run."""
    return decontaminate(records, cfg.lexicons, cfg.domains, cfg.margin, cfg.min_score)


def eval_identities(cfg: DataConfig, store: Path) -> list[dict]:
    """Name, URI, version (sha256), path and format of every eval set."""
    from brainstacks_core.data.generators import write_generated

    out = []
    for e in cfg.eval_sets:
        if e.format == "generated":
            path = write_generated(e.generator or e.name, e.rows, cfg.seed + 1000, store / "generated" / "eval")
        else:
            path = cfg.resolve(e.path or "")
            if not path.is_file():
                raise FileNotFoundError(f"eval set {e.name!r}: file not found at {path}")
        sha = sha256_file(path)
        out.append({"name": e.name, "uri": f"eval://{e.name}", "version": sha, "sha256": sha, "path": str(path),
                    "format": e.format, "kind": "eval_set"})
    return out


@functools.lru_cache(maxsize=4)
def _index(spec: tuple[tuple[str, str, str, str], ...], n: int) -> NgramIndex:
    fmt = {"generated": "generated"}
    return build_index({name: eval_texts(Path(path), fmt.get(f, f)) for name, _, path, f in spec}, n)


def benchmark_index(cfg: DataConfig, store: Path) -> NgramIndex:
    """The n-gram index of the run's eval sets (cached in-process by their versions)."""
    spec = tuple((e["name"], e["version"], e["path"], e["format"]) for e in eval_identities(cfg, store))
    return _index(spec, cfg.ngram)


def as_dropped(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows in the dropped-table layout (``kind`` + ``reason``)."""
    out = pd.DataFrame({c: df[c] if c in df.columns else None for c in DROPPED_COLUMNS}, index=df.index)
    if "domain" not in df.columns and "from_domain" in df.columns:
        out["domain"] = df["from_domain"]
    out["kind"] = kind
    return out.reset_index(drop=True)


def _unit_hash(seed: int, rid: str) -> float:
    return int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:12], 16) / float(16 ** 12)


@dataclass
class FinalResult:
    """Output of :func:`finalize` for one domain."""

    train: pd.DataFrame
    val: pd.DataFrame
    quarantine: pd.DataFrame
    dropped: list[pd.DataFrame] = field(default_factory=list)
    drop_counts: dict = field(default_factory=dict)


def finalize(rows: pd.DataFrame, cfg: DataConfig, index: NgramIndex) -> FinalResult:
    """Benchmark decontamination, contract check, dedup, cap and hash split of one domain."""
    rows = rows.reset_index(drop=True)
    clean, removed = remove_contaminated(rows, index)
    clean, q1 = validate_or_quarantine(clean, DecontaminatedRecords, "decontaminate")
    dup = clean["record_id"].duplicated(keep="first")
    first = clean.drop_duplicates("record_id").set_index("record_id")
    dups = clean[dup].copy()
    dups["reason"] = [f"duplicate of record {r} (first seen at {first.at[r, 'source_uri']} "
                      f"{first.at[r, 'source_row_key']})" for r in dups["record_id"]]
    clean = clean[~dup]
    u = clean["record_id"].map(lambda r: _unit_hash(cfg.seed, r))
    capped = clean.iloc[0:0].assign(reason=pd.Series(dtype=str))
    if cfg.max_rows_per_domain is not None and len(clean) > cfg.max_rows_per_domain:
        order = u.sort_values(kind="stable").index
        keep = order[: cfg.max_rows_per_domain]
        capped = clean.drop(index=keep).assign(reason=f"over max_rows_per_domain={cfg.max_rows_per_domain} "
                                                      f"(hash order, seed {cfg.seed})")
        clean, u = clean.loc[keep].sort_index(), u.loc[keep].sort_index()
    split = clean.assign(split=["val" if x < cfg.val_fraction else "train" for x in u])
    split, q2 = validate_or_quarantine(split, SplitRecords, "split")
    dropped = [as_dropped(removed, "benchmark"), as_dropped(dups, "duplicate"), as_dropped(capped, "cap")]
    return FinalResult(train=split[split["split"] == "train"].reset_index(drop=True),
                       val=split[split["split"] == "val"].reset_index(drop=True),
                       quarantine=_concat([q1, q2], QUARANTINE_COLUMNS), dropped=dropped,
                       drop_counts={"dropped_benchmark": len(removed), "dropped_duplicate": len(dups),
                                    "dropped_cap": len(capped)})
