"""A prepared domain dataset and the checks on its counts (what ``pipeline`` returns and training reads).

:class:`PreparedDataset` names a dataset version's split files (train / val / test /
router), its quarantine, dropped and moves files, and its counts; its
``*_uri_version`` properties are the catalog versions of the split artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from brainstacks_core.data.steps import SPLITS

TRAIN_COLUMNS = ["record_id", "domain", "prompt", "response", "system", "source_uri", "source_version",
                 "source_row_key"]
_SPLIT_COLUMNS = TRAIN_COLUMNS + ["origin_domain"]


class ConservationError(AssertionError):
    """Rows were lost or double-counted between input and output."""


class EmptyDomainError(ValueError):
    """A domain has no rows left to train on; nothing is written or registered."""


@dataclass(frozen=True)
class PreparedDataset:
    """One prepared domain dataset.

    Attributes:
        domain: The domain.
        version: Content version of the dataset (every split together).
        train_path: Train parquet (columns ``TRAIN_COLUMNS`` + ``origin_domain``).
        val_path: Validation parquet (early stopping, best-stack choice).
        quarantine_path: Quarantined rows with stage, check, field, value, reason.
        dropped_path: Dropped rows with their reason (keyword, benchmark, duplicate, cap).
        moves_path: Keyword moves into and out of this domain, and rows flagged as
            foreign-looking but kept (``action``), with their keywords.
        test_path: Test parquet (the numbers a report shows).
        router_path: Router parquet (held out for the routing oracle and meta-router).
        counts: in, moved_in, moved_out, quarantined, dropped_*, flagged, one per split.
        report: Most common quarantine reasons and example moves (for ``prepare``'s printout).
        cache_hit: True when nothing was recomputed.
        new_version: True when registering it gave its URI a new latest version.
    """

    domain: str
    version: str
    train_path: Path
    val_path: Path
    quarantine_path: Path
    dropped_path: Path
    moves_path: Path
    test_path: Path | None = None
    router_path: Path | None = None
    counts: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    cache_hit: bool = False
    new_version: bool = False

    def split_path(self, split: str) -> Path | None:
        """Parquet of one split (``train``, ``val``, ``test``, ``router``)."""
        return {"train": self.train_path, "val": self.val_path, "test": self.test_path,
                "router": self.router_path}[split]

    def uri_version(self, split: str) -> str:
        """Catalog version of one split's artifact."""
        return f"{self.version}-{split}"

    @property
    def train_uri_version(self) -> str:
        """Catalog version of the train artifact."""
        return self.uri_version("train")

    @property
    def val_uri_version(self) -> str:
        """Catalog version of the val artifact."""
        return self.uri_version("val")

    @property
    def test_uri_version(self) -> str:
        """Catalog version of the test artifact."""
        return self.uri_version("test")

    @property
    def router_uri_version(self) -> str:
        """Catalog version of the router artifact."""
        return self.uri_version("router")


def check_conservation(counts: dict, domain: str) -> None:
    """``in + moved_in == splits + quarantined + moved_out + dropped``, else raise."""
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    lhs = counts["in"] + counts["moved_in"]
    rhs = sum(counts.get(s, 0) for s in SPLITS) + counts["quarantined"] + counts["moved_out"] + dropped
    if lhs != rhs:
        raise ConservationError(f"{domain}: {lhs} rows in (in + moved_in) but {rhs} accounted for: {counts}")
