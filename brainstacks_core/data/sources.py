"""Sources: read raw rows (hub, local file, generator) and normalise them to SFT records.

Every row becomes one record of the normalised contract
(``data_contracts.NormalisedRecords``): a stable ``record_id`` (hash of the
normalised content), domain, source URI, source version (hub revision or file
sha256), source row key, prompt, response, optional system. A row that cannot be
read or does not fit its format becomes a quarantine row naming file, row, field.

Local files are read row by row with the stdlib (pyarrow for parquet): row keys are
physical line numbers (``line:N``) or array elements (``element:N``), a bad line
costs only itself, and a compressed file cut mid-stream keeps its complete rows
(the tail is quarantined naming the file). Hub sources go through ``datasets``.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
import os
import socket
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from brainstacks_core.data.config import DataConfig, SourceConfig
from brainstacks_core.data.formats import FormatError, get_adapter
from brainstacks_core.files import sha256_file
from brainstacks_core.lineage.versioning import content_hash

log = logging.getLogger(__name__)

RECORD_COLUMNS = ["record_id", "domain", "source_uri", "source_version", "source_row_key",
                  "prompt", "response", "system"]
QUARANTINE_COLUMNS = ["domain", "stage", "source_uri", "source_version", "source_row_key",
                      "record_id", "check", "field", "value", "reason"]
_LOADERS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".gz": "json", ".bz2": "json", ".csv": "csv",
            ".parquet": "parquet"}


class SourceError(RuntimeError):
    """A whole source cannot be read (missing, empty, unreachable hub)."""


@dataclass(frozen=True)
class RawRow:
    """One raw row, or the reason it could not be read."""

    key: str
    data: dict | None
    error: str | None = None
    field: str = "<row>"


@dataclass(frozen=True)
class SourceBatch:
    """A normalised source: its identity, its records and its rejected rows."""

    uri: str
    version: str
    path: str | None
    n_in: int
    records: pd.DataFrame
    quarantine: pd.DataFrame = field(repr=False)


def record_id(system: str | None, prompt: str, response: str) -> str:
    """Stable id of a record: a hash of its normalised content (not of its domain)."""
    return content_hash(system or "", prompt, response)


def quarantine_row(domain: str, stage: str, uri: str, version: str, key: str, rid: str | None,
                   check: str, field_name: str, value: Any, reason: str) -> dict:
    """One row of the quarantine table (``value`` truncated to 200 characters)."""
    return {"domain": domain, "stage": stage, "source_uri": uri, "source_version": version,
            "source_row_key": key, "record_id": rid, "check": check, "field": field_name,
            "value": None if value is None else str(value)[:200], "reason": reason}


# ---------------------------------------------------------------- readers
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open}
# What a compressed stream cut mid-way raises (gzip: EOFError; bz2/zlib: OSError subclasses).
_TRUNCATED = (EOFError, OSError, zlib.error)


def _open_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(physical line number, raw bytes)`` of a possibly compressed text file.

    A compressed file cut mid-stream yields every complete line before the cut and
    then raises :class:`TruncatedSource` (the caller quarantines the tail).
    """
    opener = _OPENERS.get(path.suffix, open)
    n = 0
    try:
        with opener(path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                yield n, line
    except _TRUNCATED as exc:
        raise TruncatedSource(path, n, exc) from exc


class TruncatedSource(Exception):
    """A compressed file ends before its end-of-stream marker (a cut download)."""

    def __init__(self, path: Path, last_line: int, exc: BaseException) -> None:
        super().__init__(f"{path}: compressed stream cut after line {last_line} ({type(exc).__name__}: {exc}); "
                         f"the rest of the file cannot be read")
        self.last_line = last_line


def _json_line(i: int, raw: bytes) -> RawRow:
    if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 BOM
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawRow(f"line:{i}", None, f"invalid UTF-8 at byte {exc.start + 1} of the line")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return RawRow(f"line:{i}", None, f"malformed JSON at column {exc.colno}: {exc.msg}")
    ok = isinstance(row, dict)
    return RawRow(f"line:{i}", row if ok else None, None if ok else f"expected an object, got {_json_type(row)}")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _json_array(path: Path, data: bytes) -> Iterator[RawRow]:
    """A JSON array of rows (``.json``, or a ``.jsonl`` file that holds one array): ``element:N`` keys."""
    try:
        data = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: invalid UTF-8 at byte {exc.start + 1}") from exc
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON array of rows, got {_json_type(data)}")
    for i, row in enumerate(data):
        ok = isinstance(row, dict)
        yield RawRow(f"element:{i}", row if ok else None,
                     None if ok else f"element {i}: expected an object, got {_json_type(row)}")


def _first_byte(path: Path) -> bytes:
    try:
        for _, line in _open_lines(path):
            stripped = line.lstrip(b"\xef\xbb\xbf \t\r\n")
            if stripped:
                return stripped[:1]
    except TruncatedSource:
        pass
    return b""


def _read_bytes(path: Path) -> bytes:
    opener = _OPENERS.get(path.suffix)
    if opener is None:
        return path.read_bytes()
    try:
        with opener(path, "rb") as fh:
            return fh.read()
    except _TRUNCATED as exc:
        raise SourceError(f"{path}: compressed stream is cut ({type(exc).__name__}: {exc}); a JSON array cannot "
                          f"be read in part") from exc


def _records(path: Path, loader: str) -> Iterator[RawRow]:
    """Stdlib/pyarrow reader: one RawRow per row, bad ones carrying their error.

    Keys: ``line:N`` (physical line, 1-based) for JSON lines, ``element:N`` (0-based)
    for a JSON array, ``row:N`` (0-based data row) for csv and parquet.
    """
    lines = path.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.bz2", ".ndjson"))
    if loader == "json" and (not lines or _first_byte(path) == b"["):
        yield from _json_array(path, _read_bytes(path))
        return
    if loader == "json":
        try:
            for i, raw in _open_lines(path):
                if raw.strip():
                    yield _json_line(i, raw)
        except TruncatedSource as exc:
            yield RawRow(f"line:{exc.last_line + 1}-end", None, str(exc))
        return
    if loader == "csv":
        try:
            with open(path, encoding="utf-8-sig", errors="strict", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh)):
                    yield RawRow(f"row:{i}", dict(row))
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}: invalid UTF-8 at byte {exc.start + 1}") from exc
        return
    if loader == "parquet":
        for i, row in enumerate(pd.read_parquet(path).to_dict("records")):
            yield RawRow(f"row:{i}", row)
        return
    raise SourceError(f"{path}: no reader for loader {loader!r} (known: json, csv, parquet)")


def read_records(path: Path, loader: str, cache_dir: Path | None = None) -> list[RawRow]:
    """Rows of a row-per-record file (JSON array, JSON lines, csv, parquet; gzip/bz2 too).

    Read with the stdlib (and pyarrow for parquet) rather than ``datasets``: the keys
    must be physical line numbers, a cut compressed file must give up its complete
    rows, and one bad line must not cost the others. ``cache_dir`` is unused (kept
    for callers).
    """
    return list(_records(path, loader))


def read_keyed_json(path: Path) -> list[RawRow]:
    """A JSON object keyed by id (PubMedQA): one row per key."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: cannot parse JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object keyed by id, got {type(data).__name__}")
    return [RawRow(f"id:{k}", v if isinstance(v, dict) else None,
                   None if isinstance(v, dict) else "expected an object") for k, v in data.items()]


def read_logiqa_lines(path: Path) -> list[RawRow]:
    """LogiQA text: 8 lines per example (blank, answer a-d, context, question, 4 options)."""
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: invalid UTF-8 at byte {exc.start}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for n, start in enumerate(range(0, len(lines), 8)):
        block = [x.rstrip("\r") for x in lines[start:start + 8]]
        key = f"example:{n}@line:{start + 1}"
        if len(block) < 8 or block[0].strip() or block[1].strip().lower() not in ("a", "b", "c", "d"):
            rows.append(RawRow(key, None, "not an 8-line LogiQA example (blank, answer, context, question, 4 options)"))
            continue
        options = {}
        for line in block[4:8]:
            letter, _, text = line.partition(".")
            options[letter.strip().upper()] = text.strip()
        rows.append(RawRow(key, {"answer": block[1].strip(), "context": block[2].strip(),
                                 "question": block[3].strip(), "options": options}))
    return rows


def read_raw(path: Path, reader: str, loader: str | None, cache_dir: Path | None) -> list[RawRow]:
    """Dispatch to the reader a format adapter names."""
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: empty file (0 bytes)")
    if reader == "keyed_json":
        rows = read_keyed_json(path)
    elif reader == "logiqa_lines":
        rows = read_logiqa_lines(path)
    else:
        rows = read_records(path, loader or _LOADERS.get(path.suffix, "json"), cache_dir)
    if not rows:
        raise SourceError(f"{path}: empty source (0 rows)")
    return rows


def source_uri(spec: SourceConfig, cfg: DataConfig) -> str:
    """The stable identity of a source (no file is read)."""
    if spec.kind == "hf":
        return f"hf://{spec.repo}/{spec.config or 'default'}/{spec.split}"
    if spec.kind == "generated":
        return f"generated://{spec.generator}?rows={spec.rows}&seed={cfg.seed}"
    return f"local:{spec.path}"


def read_hf(spec: SourceConfig, cache_dir: Path | None) -> list[RawRow]:
    """A hub dataset at its pinned revision, through ``datasets.load_dataset``.

    Fails fast (3 s probe) when the hub cannot be reached, naming the source and
    the offline alternative, instead of waiting on retries.
    """
    label = f"hf source {spec.repo}@{spec.revision} ({spec.config or 'default'}/{spec.split})"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not offline:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError as exc:
            raise SourceError(
                f"{label}: the hub is unreachable ({exc}). Offline alternative: download the files "
                f"elsewhere and use a `local` source (kind: local, path: ...), or set HF_DATASETS_OFFLINE=1 "
                f"to read the local datasets cache.") from exc
    import datasets

    try:
        ds = datasets.load_dataset(spec.repo, spec.config, split=spec.split, revision=spec.revision,
                                   cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"{label}: load failed: {exc}. Offline alternative: a `local` source.") from exc
    return [RawRow(f"row:{i}", r) for i, r in enumerate(ds.to_list())]


# ---------------------------------------------------------------- normalise
def source_identity(spec: SourceConfig, cfg: DataConfig, store: Path) -> tuple[str, str, Path | None]:
    """``(uri, version, local path)`` of a source; generated files are written here."""
    uri = source_uri(spec, cfg)
    if spec.kind == "hf":
        return uri, str(spec.revision), None
    if spec.kind == "generated":
        from brainstacks_core.data.generators import write_generated

        path = write_generated(spec.generator, spec.rows, cfg.seed, store / "generated")
        return uri, sha256_file(path), path
    path = cfg.resolve(spec.path)
    if not path.is_file():
        raise SourceError(f"local source {spec.path!r}: file not found at {path}")
    return uri, sha256_file(path), path


def normalise_source(spec: SourceConfig, domain: str, cfg: DataConfig, store: Path,
                     cache_dir: Path | None = None, identity: tuple[str, str, Path | None] | None = None
                     ) -> SourceBatch:
    """Read one source and normalise every row (bad rows -> quarantine rows).

    Args:
        spec: The source.
        domain: The domain it feeds.
        cfg: The data config (paths, seed).
        store: The profile's artifact store (generated files, loader cache).
        cache_dir: ``datasets`` cache folder.
        identity: ``source_identity`` already computed by the caller (saves a hash).

    Returns:
        The batch: records in the normalised contract, quarantine rows, row count.

    Raises:
        SourceError: The source cannot be read at all (message names it).
    """
    uri, version, path = identity or source_identity(spec, cfg, store)
    adapter = get_adapter("prompt_response" if spec.kind == "generated" else spec.format)
    raw = read_hf(spec, cache_dir) if spec.kind == "hf" else read_raw(path, adapter.reader, spec.loader, cache_dir)
    if spec.max_rows is not None:
        raw = raw[: spec.max_rows]
    where = str(path) if path else uri
    records, bad = [], []
    names = adapter.fields
    for row in raw:
        if row.data is None:
            bad.append(quarantine_row(domain, "read", uri, version, row.key, None, "readable", row.field,
                                      None, f"{where}: {row.key}: {row.error}"))
            continue
        try:
            system, prompt, response = adapter.to_triple(row.data)
            system = system if isinstance(system, str) and system else spec.system
            for part, text in (("prompt", prompt), ("response", response)):
                if not text.strip():
                    raise FormatError(names[part], "blank (empty or whitespace only)", text)
            for part, text in (("prompt", prompt), ("response", response), ("system", system)):
                if text is not None and len(text) > cfg.max_chars:
                    raise FormatError(names[part], f"{len(text)} characters (> max_chars {cfg.max_chars})",
                                      f"{len(text)} chars", check="max_chars")
        except FormatError as exc:
            bad.append(quarantine_row(domain, "normalise", uri, version, row.key, None, exc.check, exc.field,
                                      exc.value, f"{where}: {row.key}: {exc}"))
            continue
        records.append((record_id(system, prompt, response), domain, uri, version, row.key, prompt, response, system))
    return SourceBatch(uri=uri, version=version, path=str(path) if path else None, n_in=len(raw),
                       records=pd.DataFrame.from_records(records, columns=RECORD_COLUMNS),
                       quarantine=pd.DataFrame(bad, columns=QUARANTINE_COLUMNS))


def check_sources(cfg: DataConfig) -> None:
    """Fail fast, before any work, on a local source that is missing or empty (one clear message).

    Raises:
        SourceError: Naming the source and the file.
    """
    for domain, specs in cfg.sources.items():
        for spec in specs:
            if spec.kind != "local":
                continue
            path = cfg.resolve(spec.path)
            if not path.is_file():
                raise SourceError(f"{domain}: local source {spec.path!r}: file not found at {path}")
            if path.stat().st_size == 0:
                raise SourceError(f"{domain}: local source {spec.path!r}: empty file (0 bytes) at {path}")
