"""Local file readers: one :class:`RawRow` per row of a file, or the reason it cannot be read.

Read with the stdlib (pyarrow for parquet) so that row keys are physical line
numbers (``line:N``, 1-based) or array elements (``element:N``, 0-based; ``row:N``
for csv and parquet data rows), one bad line costs only itself, and a compressed
file cut mid-stream keeps its complete rows (the tail becomes one unreadable row
naming the file and the last good line). A file that cannot be read at all (missing,
empty, not JSON) raises :class:`SourceError` naming it.

Memory: a file's rows are held once as Python dicts (the shared profile's largest
file, GSM8K train, is ~4 MB); nothing is kept after normalisation.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

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
