"""Experiment profiles: one YAML file per experiment in ``configs/``.

A profile has a few top-level keys and one section per pipeline stage. Each stage
parses its own section into its own frozen config (``data`` into
``brainstacks_core.data_config.DataConfig``, ``base`` into ``TinyBaseConfig`` or
``HubBaseConfig``, ``moe`` into ``MoELoRAConfig``, ``training`` into
``TrainingConfig``), so this module stays free of stage details.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Profile(BaseModel):
    """A whole experiment, as read from ``configs/<name>.yaml``.

    Attributes:
        name: Profile name; part of every artifact URI (``stack://<name>/...``).
        artifact_root: Folder of the artifact store. Relative paths are resolved
            against the profile file's parent's parent (the repository root for
            ``configs/*.yaml``) unless absolute.
        seed: Global seed for data splits, initialisation and training.
        data: The data section (sources, lexicons, split), see ``DataConfig``.
        base: The base-model section.
        moe: The MoE-LoRA section.
        training: The training section (rounds, steps, null space, ...).
        router: The meta-router section (later stages).
        experiment1: Experiment 1 settings (domain, lora_rank); empty = skipped.
        source_path: The YAML file the profile came from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    artifact_root: Path = Path("artifacts")
    seed: int = 0
    data: dict[str, Any] = Field(default_factory=dict)
    base: dict[str, Any] = Field(default_factory=dict)
    moe: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    router: dict[str, Any] = Field(default_factory=dict)
    experiment1: dict[str, Any] = Field(default_factory=dict)
    source_path: Path | None = None

    @property
    def store(self) -> Path:
        """Root of this profile's artifacts: ``<artifact_root>/<name>``."""
        return self.artifact_root / self.name

    @property
    def catalog_path(self) -> Path:
        """The DuckDB lineage catalog of this profile."""
        return self.store / "catalog.duckdb"


def load_profile(path: str | Path, artifact_root: str | Path | None = None) -> Profile:
    """Read a profile YAML file.

    Args:
        path: The YAML file.
        artifact_root: Overrides the file's ``artifact_root`` (tests use a tmp dir).

    Returns:
        The parsed, frozen profile.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The YAML is not a mapping or has unknown top-level keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profile not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a profile must be a YAML mapping, got {type(raw).__name__}")
    root = Path(artifact_root) if artifact_root is not None else Path(raw.get("artifact_root", "artifacts"))
    if not root.is_absolute():
        root = (path.resolve().parent.parent / root) if artifact_root is None else root.resolve()
    raw["artifact_root"] = root
    try:
        return Profile(**raw, source_path=path.resolve())
    except Exception as exc:  # pydantic's message names the bad key
        raise ValueError(f"{path}: invalid profile: {exc}") from exc
