"""Pandera models, one per step boundary of the data pipeline.

``NormalisedRecords`` guards the output of ``sources.normalise_source``;
``StrippedRecords`` the output of chat-token stripping; ``DecontaminatedRecords``
the output of keyword + benchmark decontamination; ``SplitRecords`` the parquet
files that training reads. Validation is lazy: every failing row and check is
reported at once and turned into quarantine rows by :mod:`data_contracts.quarantine`.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from brainstacks_core.data.text_cleaning import has_chat_tokens

MAX_TEXT_CHARS = 100_000
_ID = r"^[0-9a-f]{16}$"


class NormalisedRecords(pa.DataFrameModel):
    """After normalisation: one SFT record per source row (guards ``normalise_source``)."""

    record_id: Series[str] = pa.Field(str_matches=_ID)
    domain: Series[str] = pa.Field(str_length={"min_value": 1})
    source_uri: Series[str] = pa.Field(str_length={"min_value": 1})
    source_version: Series[str] = pa.Field(str_length={"min_value": 1})
    source_row_key: Series[str] = pa.Field(str_length={"min_value": 1})
    prompt: Series[str] = pa.Field(str_length={"max_value": MAX_TEXT_CHARS})
    response: Series[str] = pa.Field(str_length={"max_value": MAX_TEXT_CHARS})
    system: Series[str] = pa.Field(nullable=True, str_length={"max_value": MAX_TEXT_CHARS})

    @pa.check("prompt", "response", name="not_blank")
    def _not_blank(cls, s: Series[str]) -> Series[bool]:
        return s.str.strip().str.len() > 0

    class Config:
        strict = True


class StrippedRecords(NormalisedRecords):
    """After ``strip_chat_tokens``: no template marker is left in any text field."""

    @pa.check("prompt", "response", "system", name="no_chat_tokens")
    def _no_tokens(cls, s: Series[str]) -> Series[bool]:
        return s.map(lambda t: t is None or t != t or not has_chat_tokens(t)).astype(bool)


class DecontaminatedRecords(StrippedRecords):
    """After keyword decontamination: ``origin_domain`` says where a moved row came from."""

    origin_domain: Series[str] = pa.Field(str_length={"min_value": 1})


class SplitRecords(DecontaminatedRecords):
    """The split parquet files: unique ``record_id`` (so splits never overlap), ``split`` in
    {train, val, test, router}."""

    record_id: Series[str] = pa.Field(str_matches=_ID, unique=True)
    split: Series[str] = pa.Field(isin=["train", "val", "test", "router"])
