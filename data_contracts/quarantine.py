"""Lazy validation that turns failing rows into quarantine rows instead of errors.

:func:`validate_or_quarantine` validates a frame against a pandera model with
``lazy=True``; every row named in ``failure_cases`` leaves the frame and becomes a
quarantine row carrying the stage, the failing check, the column and the value.
A failure that names no row (a wrong column set or dtype) is a programming error
and is raised with pandera's full report.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

QUARANTINE_COLUMNS = ["domain", "stage", "source_uri", "source_version", "source_row_key",
                      "record_id", "check", "field", "value", "reason"]


class QuarantineRecords(pa.DataFrameModel):
    """Rejected rows, each with the stage, check, field and value that rejected it."""

    domain: pa.typing.Series[str]
    stage: pa.typing.Series[str]
    source_uri: pa.typing.Series[str] = pa.Field(nullable=True)
    source_version: pa.typing.Series[str] = pa.Field(nullable=True)
    source_row_key: pa.typing.Series[str] = pa.Field(nullable=True)
    record_id: pa.typing.Series[str] = pa.Field(nullable=True)
    check: pa.typing.Series[str]
    field: pa.typing.Series[str]
    value: pa.typing.Series[str] = pa.Field(nullable=True)
    reason: pa.typing.Series[str] = pa.Field(str_length={"min_value": 1})

    class Config:
        strict = True


def empty_quarantine() -> pd.DataFrame:
    """A quarantine frame with no rows."""
    return pd.DataFrame({c: pd.Series(dtype=object) for c in QUARANTINE_COLUMNS})


def validate_or_quarantine(df: pd.DataFrame, model: type[pa.DataFrameModel], stage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate ``df`` lazily; return ``(valid rows, quarantine rows)``.

    Args:
        df: Records with a unique index.
        model: The pandera model of this step boundary.
        stage: Name of the step, written into each quarantine row.

    Raises:
        ValueError: A failure that names no row (schema-level), with pandera's cases.
    """
    if df.empty:
        return df, empty_quarantine()
    df = df.reset_index(drop=True)
    try:
        return model.validate(df, lazy=True), empty_quarantine()
    except SchemaErrors as err:
        cases = err.failure_cases
    row_cases = cases[cases["index"].notna()]
    if len(row_cases) < len(cases):
        bad = cases[cases["index"].isna()][["column", "check", "failure_case"]].to_string()
        raise ValueError(f"{model.__name__} ({stage}): schema-level failure, not a row problem:\n{bad}")
    rows = []
    first = row_cases.drop_duplicates("index")  # one quarantine row per record: its first failure
    for idx, col, check, value in zip(first["index"], first["column"], first["check"], first["failure_case"]):
        r = df.loc[int(idx)]
        shown = None if value is None else str(value)[:200]
        rows.append({"domain": r.get("domain"), "stage": stage, "source_uri": r.get("source_uri"),
                     "source_version": r.get("source_version"), "source_row_key": r.get("source_row_key"),
                     "record_id": r.get("record_id"), "check": str(check), "field": str(col), "value": shown,
                     "reason": f"{r.get('source_uri')}: {r.get('source_row_key')}: field {col!r} failed "
                               f"{check} ({model.__name__}, stage {stage}); value: {shown!r}"})
    bad_idx = sorted({int(i) for i in row_cases["index"]})
    return df.drop(index=bad_idx).reset_index(drop=True), pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
