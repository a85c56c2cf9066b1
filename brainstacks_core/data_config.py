"""The ``data:`` section of a profile, parsed into one frozen pydantic config.

Everything that decides what a prepared dataset contains lives here (sources,
lexicons, margins, eval sets, split), so its hash is the step-config part of every
dataset version. Machine-specific paths (``base_dir``) are excluded from the hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from brainstacks_core.profile import Profile


class SourceConfig(BaseModel):
    """One source of rows for a domain.

    Attributes:
        kind: ``hf`` (hub dataset, pinned revision), ``local`` (a file) or
            ``generated`` (a deterministic generator of ``synthetic_data``).
        format: Name of the format adapter (see ``formats.ADAPTERS``).
        path: Local file, relative to the repository root (``../shared/data/...``).
        loader: ``datasets`` loader for a local file (json, csv, parquet, text);
            guessed from the extension when omitted.
        repo: Hub repo id (``hf``).
        config: Hub dataset config name (``hf``).
        split: Hub split (``hf``).
        revision: Pinned hub revision, a commit sha (``hf``; required).
        generator: Generator name (``generated``), e.g. ``math``.
        rows: Number of rows to generate (``generated``).
        max_rows: Keep only the first ``max_rows`` rows of the source.
        system: A system prompt given to every row of this source.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf", "local", "generated"]
    format: str = "alpaca"
    path: str | None = None
    loader: str | None = None
    repo: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    generator: str | None = None
    rows: int = 400
    max_rows: int | None = Field(default=None, ge=1)
    system: str | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> "SourceConfig":
        if self.kind == "hf" and (not self.repo or not self.revision):
            raise ValueError(f"hf source {self.repo!r} needs `repo` and a pinned `revision` (commit sha)")
        if self.kind == "local" and not self.path:
            raise ValueError("local source needs `path`")
        if self.kind == "generated" and not self.generator:
            raise ValueError("generated source needs `generator`")
        return self


class EvalSetConfig(BaseModel):
    """A benchmark whose items must not appear in training rows.

    Attributes:
        name: Benchmark name, written into every removal reason.
        path: Local file (relative to the repository root) or None for ``generated``.
        format: Eval format adapter (``gsm8k``, ``mcq``, ``mc_query``, ``generated``).
        generator: Generator name when ``format`` is ``generated``.
        rows: Rows to generate when ``format`` is ``generated``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str | None = None
    format: str = "mcq"
    generator: str | None = None
    rows: int = 100


class DataConfig(BaseModel):
    """Everything the data step needs; the hash of it is part of each version.

    Attributes:
        domains: Domains in curriculum order.
        sources: Sources per domain.
        lexicons: Keyword lexicon per domain (may name domains outside the run:
            rows that belong there are dropped).
        margin: A foreign domain must beat the row's own score by this many hits.
        min_score: Minimum foreign score before a row can move at all.
        eval_sets: Benchmarks for 13-gram decontamination.
        ngram: n of the benchmark n-gram overlap check.
        val_fraction: Share of rows (by hash) that go to validation.
        max_rows_per_domain: Cap after de-duplication (hash order; the rest dropped).
        max_chars: Longest prompt/response/system accepted (longer rows quarantined).
        seed: Seed of the split and the generators.
        base_dir: Folder that relative source paths are resolved against.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: list[str]
    sources: dict[str, list[SourceConfig]]
    lexicons: dict[str, list[str]] = Field(default_factory=dict)
    margin: int = Field(default=3, ge=1)
    min_score: int = Field(default=3, ge=1)
    eval_sets: list[EvalSetConfig] = Field(default_factory=list)
    ngram: int = Field(default=13, ge=3)
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    max_rows_per_domain: int | None = Field(default=None, ge=1)
    max_chars: int = Field(default=100_000, ge=100)
    seed: int = 0
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _check_domains(self) -> "DataConfig":
        missing = [d for d in self.domains if not self.sources.get(d)]
        if missing:
            raise ValueError(f"domains without sources: {missing}")
        extra = sorted(set(self.sources) - set(self.domains))
        if extra:
            raise ValueError(f"sources for domains not listed in `domains`: {extra}")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"duplicate domains: {self.domains}")
        return self

    def resolve(self, path: str) -> Path:
        """A source path made absolute against ``base_dir``."""
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p).resolve()


def load_data_config(profile: Profile) -> DataConfig:
    """Parse ``profile.data`` into a :class:`DataConfig`.

    Relative source paths resolve against the profile file's repository root
    (``profile.source_path.parent.parent``); the profile ``seed`` is the default seed.

    Raises:
        ValueError: The section is missing or invalid (message names the profile).
    """
    if not profile.data:
        raise ValueError(f"profile {profile.name!r} has no `data:` section")
    base = profile.source_path.parent.parent if profile.source_path else Path.cwd()
    raw = dict(profile.data)
    raw.setdefault("seed", profile.seed)
    try:
        return DataConfig(**raw, base_dir=base)
    except Exception as exc:
        raise ValueError(f"profile {profile.name!r} ({profile.source_path}): invalid data section: {exc}") from exc
