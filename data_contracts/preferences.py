"""Pandera model of preference pairs (the DPO stage's input boundary).

``PreferencePairs`` guards the output of ``brainstacks_core.data.preferences``: one
row per (prompt, chosen, rejected) pair with its source identity, non-blank texts
within the length limit and a chosen answer that differs from the rejected one.
Failing rows are quarantined by :func:`data_contracts.quarantine.validate_or_quarantine`
with the file, row key, field and check in the reason.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from data_contracts.records import MAX_TEXT_CHARS

PREFERENCE_COLUMNS = ["record_id", "domain", "source_uri", "source_version", "source_row_key",
                      "prompt", "chosen", "rejected", "system"]


class PreferencePairs(pa.DataFrameModel):
    """One preference pair per row (``record_id`` = hash of system, prompt, chosen, rejected)."""

    record_id: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{16}$")
    domain: Series[str] = pa.Field(str_length={"min_value": 1})
    source_uri: Series[str] = pa.Field(str_length={"min_value": 1})
    source_version: Series[str] = pa.Field(str_length={"min_value": 1})
    source_row_key: Series[str] = pa.Field(str_length={"min_value": 1})
    prompt: Series[str] = pa.Field(str_length={"max_value": MAX_TEXT_CHARS})
    chosen: Series[str] = pa.Field(str_length={"max_value": MAX_TEXT_CHARS})
    rejected: Series[str] = pa.Field(str_length={"max_value": MAX_TEXT_CHARS})
    system: Series[str] = pa.Field(nullable=True)

    @pa.check("prompt", "chosen", "rejected", name="not_blank")
    def _not_blank(cls, s: Series[str]) -> Series[bool]:
        return s.str.strip().str.len() > 0

    @pa.dataframe_check(name="chosen_differs_from_rejected")
    def _differs(cls, df) -> Series[bool]:
        return df["chosen"].str.strip() != df["rejected"].str.strip()

    class Config:
        strict = True
