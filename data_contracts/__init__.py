"""Pandera data contracts of the data pipeline (no Prefect here)."""

from data_contracts.quarantine import QUARANTINE_COLUMNS, QuarantineRecords, empty_quarantine, validate_or_quarantine
from data_contracts.records import (
    MAX_TEXT_CHARS,
    DecontaminatedRecords,
    NormalisedRecords,
    SplitRecords,
    StrippedRecords,
)

__all__ = ["MAX_TEXT_CHARS", "QUARANTINE_COLUMNS", "DecontaminatedRecords", "NormalisedRecords",
           "QuarantineRecords", "SplitRecords", "StrippedRecords", "empty_quarantine", "validate_or_quarantine"]
