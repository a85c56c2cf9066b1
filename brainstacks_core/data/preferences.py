"""Preference pairs for a domain's DPO stage: a data source like any other.

Each :class:`~brainstacks_core.data.config.PreferenceSourceConfig` is read (a local
file, or deterministic generated pairs for the offline demo), normalised to
``prompt / chosen / rejected`` (formats ``pairs``, ``sharegpt_dpo``, ``hh_rlhf``),
checked against ``data_contracts.preferences.PreferencePairs`` and de-duplicated.
Every rejected row is kept in a quarantine table with its reason (file, row key,
field, check). The result is versioned by content (rows, source versions, data code
version), written once under ``<store>/preferences/<domain>/<version>/`` and, with a
catalog, registered as ``dataset://<profile>/<domain>/preferences`` with its sources
as upstream and its rows as members (so ``brainstacks audit --record`` finds them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from brainstacks_core.data.config import PreferenceSourceConfig
from brainstacks_core.data.readers import RawRow, read_records
from brainstacks_core.data.sources import QUARANTINE_COLUMNS, quarantine_row
from brainstacks_core.files import atomic_write, atomic_write_json, sha256_file
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.versioning import content_hash, data_code_version
from data_contracts.preferences import PREFERENCE_COLUMNS, PreferencePairs
from data_contracts.quarantine import validate_or_quarantine

log = logging.getLogger(__name__)
STAGE = "preferences"


@dataclass(frozen=True)
class PreparedPreferences:
    """A domain's prepared preference pairs and where they are recorded."""

    domain: str
    uri: str
    version: str
    pairs: pd.DataFrame
    quarantine: pd.DataFrame
    path: Path
    sources: tuple[str, ...]


class PreferenceFormatError(ValueError):
    """A row that does not have the shape its format needs (``field`` names the culprit)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _text(row: dict, field: str) -> str:
    value = row.get(field)
    if isinstance(value, dict):  # sharegpt_dpo: {"from": "gpt", "value": "..."}
        value = value.get("value")
    if not isinstance(value, str):
        raise PreferenceFormatError(field, f"field {field!r} must be a string, got {type(value).__name__}")
    return value


def _pairs(row: dict) -> tuple[str | None, str, str, str]:
    system = row.get("system") if isinstance(row.get("system"), str) else None
    return system, _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected")


def _sharegpt_dpo(row: dict) -> tuple[str | None, str, str, str]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise PreferenceFormatError("conversations", "field 'conversations' must be a non-empty list of turns")
    texts = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str):
            raise PreferenceFormatError(f"conversations[{i}]", f"turn {i} has no string 'value'")
        texts.append(t["value"] if len(turns) == 1 else f"{t.get('from', 'human')}: {t['value']}")
    system = row.get("system") if isinstance(row.get("system"), str) else None
    return system, "\n".join(texts), _text(row, "chosen"), _text(row, "rejected")


_H, _A = "\n\nHuman:", "\n\nAssistant:"


def _hh_rlhf(row: dict) -> tuple[str | None, str, str, str]:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    cut_c, cut_r = chosen.rfind(_A), rejected.rfind(_A)
    if cut_c < 0 or cut_r < 0:
        raise PreferenceFormatError("chosen" if cut_c < 0 else "rejected",
                                    "no '\\n\\nAssistant:' turn in the transcript")
    if chosen[:cut_c] != rejected[:cut_r]:
        raise PreferenceFormatError("rejected", "chosen and rejected transcripts do not share their prompt")
    prompt = chosen[:cut_c].replace(_H, "\nHuman:").replace(_A, "\nAssistant:").strip()
    return None, prompt, chosen[cut_c + len(_A):].strip(), rejected[cut_r + len(_A):].strip()


FORMATS = {"pairs": _pairs, "sharegpt_dpo": _sharegpt_dpo, "hh_rlhf": _hh_rlhf}


def _source(spec: PreferenceSourceConfig, ctx: StoreContext) -> tuple[str, str, Path | None, list[RawRow]]:
    """``(uri, version, path, raw rows)`` of one source."""
    if spec.kind == "generated":
        from brainstacks_core.data.generators import generate_pairs

        rows = generate_pairs(spec.generator, spec.rows, ctx.seed)
        uri = f"generated://{spec.generator}?rows={spec.rows}&seed={ctx.seed}"
        return uri, content_hash(uri, rows), None, [RawRow(f"row:{i}", r) for i, r in enumerate(rows)]
    path = Path(spec.path)
    path = path if path.is_absolute() else (ctx.repo_root / path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"preference source {spec.path}: no file at {path}")
    return f"local:{spec.path}", sha256_file(path)[:16], path, read_records(path, "json")


def normalise(spec: PreferenceSourceConfig, domain: str, ctx: StoreContext) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    """Rows of one source as preference pairs, and its rejected rows (with reasons).

    Returns:
        ``(pairs, quarantine, source_uri, source_version)``.
    """
    uri, version, path, raw = _source(spec, ctx)
    where = str(path) if path is not None else uri
    adapter = FORMATS[spec.format]
    good, bad = [], []
    for r in raw[: spec.max_rows] if spec.max_rows else raw:
        def reject(check: str, field: str, value: Any, why: str) -> None:
            bad.append(quarantine_row(domain, STAGE, uri, version, r.key, None, check, field, value,
                                      f"{where}: {r.key}: field {field!r}: {why}"))
        if r.data is None:
            reject("readable", r.field, None, r.error or "unreadable row")
            continue
        try:
            system, prompt, chosen, rejected = adapter(r.data)
        except PreferenceFormatError as exc:
            reject(f"format:{spec.format}", exc.field, r.data.get(exc.field.split("[")[0]), str(exc))
            continue
        too_long = [f for f, t in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected))
                    if len(t) > spec.max_chars]
        if too_long:
            reject("max_chars", too_long[0], None, f"longer than max_chars {spec.max_chars}")
            continue
        if chosen.strip() == rejected.strip() and chosen.strip():
            reject("chosen_differs_from_rejected", "rejected", rejected, "identical to 'chosen': no preference")
            continue
        good.append({"record_id": content_hash(system or "", prompt, chosen, rejected), "domain": domain,
                     "source_uri": uri, "source_version": version, "source_row_key": r.key, "prompt": prompt,
                     "chosen": chosen, "rejected": rejected, "system": system})
    frame = pd.DataFrame(good, columns=PREFERENCE_COLUMNS)
    frame["system"] = frame["system"].astype(object)
    valid, q = validate_or_quarantine(frame, PreferencePairs, STAGE)
    if len(q):  # name the file in the contract's reasons too
        q["reason"] = [f"{where}: {x}" for x in q["reason"]]
    quarantine = pd.concat([pd.DataFrame(bad, columns=QUARANTINE_COLUMNS), q], ignore_index=True)
    return valid, quarantine, uri, version


def prepare_preferences(ctx: StoreContext, domain: str, sources: Sequence[PreferenceSourceConfig],
                        catalog: Any = None, run_ids: dict | None = None) -> PreparedPreferences:
    """Read, check, de-duplicate, version, write and register a domain's preference pairs.

    Written once per version (a second call with the same inputs reads nothing new).

    Raises:
        ValueError: every row of every source was rejected (the first reasons are listed).
    """
    frames, quarantines, versions = [], [], []
    for spec in sources:
        pairs, q, uri, version = normalise(spec, domain, ctx)
        frames.append(pairs)
        quarantines.append(q)
        versions.append((uri, version, len(pairs) + len(q)))
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREFERENCE_COLUMNS)
    pairs = pairs.drop_duplicates("record_id").reset_index(drop=True)
    quarantine = pd.concat(quarantines, ignore_index=True)
    if pairs.empty:
        shown = "; ".join(quarantine["reason"].head(3)) or "no rows"
        raise ValueError(f"{domain}: no usable preference pair ({len(quarantine)} rejected): {shown}")
    uri = f"dataset://{ctx.name}/{domain}/preferences"
    version = content_hash("preferences", uri, sorted(pairs["record_id"]), [v for _, v, _ in versions],
                           data_code_version())
    out = ctx.store / "preferences" / domain / version
    if not (out / "pairs.parquet").is_file():
        with atomic_write(out / "quarantine.parquet") as tmp:
            quarantine.astype(object).to_parquet(tmp, index=False)
        with atomic_write(out / "pairs.parquet") as tmp:
            pairs.to_parquet(tmp, index=False)
        atomic_write_json(out / "manifest.json", {"uri": uri, "version": version, "rows": len(pairs),
                                                  "quarantined": len(quarantine),
                                                  "sources": [{"uri": u, "version": v, "rows_in": n}
                                                              for u, v, n in versions]})
    if len(quarantine):
        log.warning("%s: %d preference rows quarantined (%s), e.g. %s", domain, len(quarantine),
                    out / "quarantine.parquet", quarantine["reason"].iloc[0])
    if catalog is not None:
        for u, v, _ in versions:
            catalog.record_artifact(uri=u, version=v, kind="source", path=None, sha256=None,
                                    code_version=data_code_version(), config_hash=None, run_ids=run_ids)
        catalog.record_artifact(uri=uri, version=version, kind="dataset", path=str(out / "pairs.parquet"),
                                sha256=sha256_file(out / "pairs.parquet"), code_version=data_code_version(),
                                config_hash=content_hash(list(sources)), inputs=[v for _, v, _ in versions],
                                metadata={"rows": len(pairs), "quarantined": len(quarantine)}, run_ids=run_ids)
        catalog.record_members(version, pairs.assign(split="train"))
    return PreparedPreferences(domain, uri, version, pairs, quarantine, out, tuple(v for _, v, _ in versions))
