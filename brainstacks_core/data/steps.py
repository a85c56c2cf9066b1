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
from brainstacks_core.data.decontamination import ClassifierEvidence, decontaminate
from brainstacks_core.data.domain_classifier import DomainClassifier, fold_of, labelled_rows, row_texts
from brainstacks_core.data.domain_classifier import fit as fit_domain_classifier
from brainstacks_core.data.sources import (
    QUARANTINE_COLUMNS,
    normalise_source,
    quarantine_row,
    record_id,
    source_identity,
    source_uri,
)
from brainstacks_core.data.text_cleaning import (
    has_chat_tokens,
    parse_conversation,
    strip_chat_tokens,
    strip_chat_tokens_unconditional,
)
from brainstacks_core.files import sha256_file
from brainstacks_core.lineage.versioning import content_hash
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
        """JSON form (manifest, stage meta): ``version`` is the catalog version, ``source_version``
        what the rows carry (file sha256 or hub revision)."""
        sha = self.version if self.path and not self.uri.startswith("hf://") else None
        return {"uri": self.uri, "version": catalog_version(self.uri, self.version), "source_version": self.version,
                "path": self.path, "kind": self.kind, "sha256": sha}


def identify(spec: SourceConfig, cfg: DataConfig, store: Path) -> SourceIdent:
    """Identity of a source (writes generated files if needed)."""
    uri, version, path = source_identity(spec, cfg, store)
    return SourceIdent(uri, version, str(path) if path else None)


def catalog_version(uri: str, sha: str) -> str:
    """Catalog version of a source or eval file: its checksum *and* its URI.

    The same bytes under two URIs (a generated file copied to a local path) are two
    artifacts, so the version cannot be the checksum alone.
    """
    return f"{sha[:16]}-{content_hash(uri, length=8)}"


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def strip_records(df: pd.DataFrame, max_chars: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strip chat tokens (or parse a whole templated conversation) and enforce ``max_chars``.

    Rows without template tokens are untouched. A row with an unambiguous marker
    (``[INST]``, ``<|im_start|>``, ...) in any field is templated as a whole, so its
    ambiguous tokens (``<s>``, ``</s>``) are removed from every field. A changed row
    gets a new ``record_id`` (the hash of what training will see).
    """
    df = df.copy()
    # A source where only some rows carry a system prompt: the others hold None, or NaN once pandas' string
    # dtype has seen the column. Only a str is a system prompt.
    mask = [has_chat_tokens(p) or has_chat_tokens(r) or (isinstance(s, str) and has_chat_tokens(s))
            for p, r, s in zip(df["prompt"], df["response"], df["system"])]
    for i in df.index[mask]:
        system, prompt, response = _str_or_none(df.at[i, "system"]), df.at[i, "prompt"], df.at[i, "response"]
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


def mixed_sources(cfg: DataConfig) -> set[str]:
    """URIs of the sources declared ``mixed`` (rows may belong to other domains)."""
    return {source_uri(s, cfg) for specs in cfg.sources.values() for s in specs if s.mixed}


def fit_classifier(records: pd.DataFrame, cfg: DataConfig) -> DomainClassifier:
    """The decontamination classifier fitted on the labelled rows of ``records`` (every domain, before moves)."""
    return fit_domain_classifier(labelled_rows(records, mixed_sources(cfg), cfg.domains), cfg.classifier, cfg.seed)


def classifier_evidence(model: DomainClassifier, seed: int, version: str = "") -> ClassifierEvidence:
    """``model`` as decontamination evidence: rows scored by their cross-fitting fold's model."""
    st = model.settings

    def score(rows: pd.DataFrame):
        return model.predict_proba(row_texts(rows["prompt"], rows["response"], st.max_chars),
                                   fold_of(rows["record_id"].tolist(), st.folds, seed))

    return ClassifierEvidence(classes=list(model.classes), threshold=model.threshold, score=score, version=version,
                              sure=st.keyword_free_probability, keyword_target=st.keyword_target)


def keyword_step(records: pd.DataFrame, cfg: DataConfig, classifier: DomainClassifier | None = None,
                 classifier_version: str = "") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Keyword (and, given ``classifier``, learnt) decontamination across every domain of the run.

    Returns:
        ``(kept, moves, dropped, flagged)``.
    """
    evidence = classifier_evidence(classifier, cfg.seed, classifier_version) if classifier is not None else None
    return decontaminate(records, cfg.lexicons, cfg.domains, cfg.margin, cfg.min_score, mixed_sources(cfg),
                         cfg.single_domain_min_score, evidence)


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
        uri = f"eval://{e.name}"
        out.append({"name": e.name, "uri": uri, "version": catalog_version(uri, sha), "sha256": sha,
                    "path": str(path), "format": e.format, "kind": "eval_set"})
    return out


@functools.lru_cache(maxsize=4)
def _index(spec: tuple[tuple[str, str, str, str], ...], n: int, template_min_items: int) -> NgramIndex:
    return build_index({name: eval_texts(Path(path), f) for name, _, path, f in spec}, n, template_min_items)


def benchmark_index(cfg: DataConfig, store: Path, evals: list[dict] | None = None) -> NgramIndex:
    """The n-gram index of the run's eval sets (cached in-process by their versions)."""
    spec = tuple((e["name"], e["version"], e["path"], e["format"]) for e in evals or eval_identities(cfg, store))
    return _index(spec, cfg.ngram, cfg.template_min_items)


def as_dropped(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows in the dropped-table layout (``kind`` + ``reason``)."""
    out = pd.DataFrame({c: df[c] if c in df.columns else None for c in DROPPED_COLUMNS}, index=df.index)
    if "domain" not in df.columns and "from_domain" in df.columns:
        out["domain"] = df["from_domain"]
    out["kind"] = kind
    return out.reset_index(drop=True)


def _unit_hash(seed: int, rid: str) -> float:
    return int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:12], 16) / float(16 ** 12)


SPLITS = ("train", "val", "test", "router")


def assign_splits(record_ids: pd.Series, cfg: DataConfig) -> list[str]:
    """Split of each record by the hash of ``seed:record_id``: deterministic, disjoint.

    ``u < val`` -> val, ``< val + test`` -> test, ``< val + test + router`` -> router,
    else train. A record's split depends only on its id and the seed, so adding or
    removing other rows never moves it.
    """
    a = cfg.val_fraction
    b = a + cfg.test_fraction
    c = b + cfg.router_fraction
    return ["val" if u < a else "test" if u < b else "router" if u < c else "train"
            for u in (_unit_hash(cfg.seed, r) for r in record_ids)]


@dataclass
class FinalResult:
    """Output of :func:`finalize` for one domain: rows per split (``SPLITS``)."""

    splits: dict[str, pd.DataFrame]
    quarantine: pd.DataFrame
    dropped: list[pd.DataFrame] = field(default_factory=list)
    drop_counts: dict = field(default_factory=dict)

    @property
    def train(self) -> pd.DataFrame:
        return self.splits["train"]

    @property
    def val(self) -> pd.DataFrame:
        return self.splits["val"]


def finalize(rows: pd.DataFrame, cfg: DataConfig, index: NgramIndex) -> FinalResult:
    """Benchmark decontamination, contract check, dedup, cap and hash split of one domain."""
    rows = rows.reset_index(drop=True)
    clean, removed = remove_contaminated(rows, index, cfg.template_min_items)
    clean, q1 = validate_or_quarantine(clean, DecontaminatedRecords, "decontaminate")
    dup = clean["record_id"].duplicated(keep="first")
    first = clean.drop_duplicates("record_id").set_index("record_id")
    dups = clean[dup].copy()
    dups["reason"] = [f"duplicate of record {r} (first seen at {first.at[r, 'source_uri']} "
                      f"{first.at[r, 'source_row_key']})" for r in dups["record_id"]]
    clean = clean[~dup]
    capped = clean.iloc[0:0].assign(reason=pd.Series(dtype=str))
    if cfg.max_rows_per_domain is not None and len(clean) > cfg.max_rows_per_domain:
        u = clean["record_id"].map(lambda r: _unit_hash(cfg.seed + 1, r))  # not the split hash: caps all splits alike
        keep = u.sort_values(kind="stable").index[: cfg.max_rows_per_domain]
        capped = clean.drop(index=keep).assign(reason=f"over max_rows_per_domain={cfg.max_rows_per_domain} "
                                                      f"(hash order, seed {cfg.seed})")
        clean = clean.loc[keep].sort_index()
    split = clean.assign(split=assign_splits(clean["record_id"], cfg))
    split, q2 = validate_or_quarantine(split, SplitRecords, "split")
    dropped = [as_dropped(removed, "benchmark"), as_dropped(dups, "duplicate"), as_dropped(capped, "cap")]
    return FinalResult(splits={s: split[split["split"] == s].reset_index(drop=True) for s in SPLITS},
                       quarantine=_concat([q1, q2], QUARANTINE_COLUMNS), dropped=dropped,
                       drop_counts={"dropped_benchmark": len(removed), "dropped_duplicate": len(dups),
                                    "dropped_cap": len(capped)})
