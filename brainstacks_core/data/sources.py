"""Sources: read raw rows (hub, local file, generator) and normalise them to SFT records.

Every row becomes one record of the normalised contract
(``data_contracts.NormalisedRecords``): a stable ``record_id`` (hash of the
normalised content), domain, source URI, source version (hub revision or file
sha256), source row key, prompt, response, optional system. A row that cannot be
read or does not fit its format becomes a quarantine row naming file, row, field.

Local files are read by :mod:`brainstacks_core.data.readers` (physical line keys,
partial reads of cut files); hub sources go through ``datasets``.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from brainstacks_core.data.config import DataConfig, SourceConfig
from brainstacks_core.data.formats import FormatError, get_adapter
from brainstacks_core.data.readers import (
    RawRow,
    SourceError,
    TruncatedSource,
    read_keyed_json,
    read_logiqa_lines,
    read_raw,
    read_records,
)
from brainstacks_core.files import sha256_file
from brainstacks_core.lineage.versioning import content_hash

log = logging.getLogger(__name__)

__all__ = ["QUARANTINE_COLUMNS", "RECORD_COLUMNS", "RawRow", "SourceBatch", "SourceError", "TruncatedSource",
           "check_sources", "normalise_source", "quarantine_row", "read_hf", "read_keyed_json", "read_logiqa_lines",
           "read_raw", "read_records", "record_id", "source_identity", "source_uri"]

RECORD_COLUMNS = ["record_id", "domain", "source_uri", "source_version", "source_row_key",
                  "prompt", "response", "system"]
QUARANTINE_COLUMNS = ["domain", "stage", "source_uri", "source_version", "source_row_key",
                      "record_id", "check", "field", "value", "reason"]
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
        if spec.track:  # the branch head now (or the last commit seen): the version names the commit read
            from brainstacks_core.data.watch import tracked_revision

            return uri, tracked_revision(spec, store), None
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
    if spec.kind == "hf" and spec.track:
        spec = spec.model_copy(update={"revision": version})
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
