"""Experiment profiles: one YAML file per experiment in ``configs/``, validated whole on load.

A profile has a few top-level keys and one typed section per pipeline stage:
``data`` (:class:`~brainstacks_core.data.config.DataConfig`), ``base``
(:class:`~brainstacks_core.base.config.BaseConfig`), ``moe``
(:class:`~brainstacks_core.stacks.config.MoELoRAConfig`), ``training``
(:class:`~brainstacks_core.training.config.TrainingConfig`), ``router``
(:class:`~brainstacks_core.routing.config.RouterConfig`), ``eval``
(:class:`~brainstacks_core.evaluation.config.EvalConfig`) and ``experiment1``.
Every model forbids unknown keys, so a misspelled key at any depth fails in
:func:`load_profile`, naming the file and the dotted key path::

    configs/x.yaml: training.sft.max_step: extra inputs are not permitted

Stages receive their typed section (``profile.training``), never the raw dict, plus
the store context (``profile.context``); a whole-run entry point receives the small
composite its stage defines (``profile.training_setup``, ``routing_setup``,
``eval_setup``). This module is the top of the core: it imports the sections, no
section imports it. Every section module is pure pydantic, so loading a profile
imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from brainstacks_core.base.config import BaseConfig
from brainstacks_core.data.config import DataConfig
from brainstacks_core.evaluation.config import EvalConfig, EvalSetup
from brainstacks_core.lineage.config import CATALOG_URL_ENV, LineageConfig
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.storage_config import StorageConfig, is_store_url, resolve_remote
from brainstacks_core.orchestration import OrchestrationConfig
from brainstacks_core.routing.config import RouterConfig, RoutingSetup
from brainstacks_core.stacks.config import MoELoRAConfig
from brainstacks_core.training.config import Experiment1Config, TrainingConfig, TrainingSetup


class ProfileError(ValueError):
    """A profile file is missing, not YAML, or fails validation; the message names file and key."""


class Profile(BaseModel):
    """A whole experiment, as read from ``configs/<name>.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Profile name; part of every artifact URI (stack://<name>/...).")
    artifact_root: Path | str = Field(Path("artifacts"), description="Folder of the artifact store (relative "
                                                                     "paths resolve against the repository root), "
                                                                     "or an object-store URL: s3://bucket/prefix, "
                                                                     "gs://bucket/prefix, file:///shared/folder.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object-store options, cache "
                                                                              "folder and budget (URL "
                                                                              "artifact_root only).")
    seed: int = Field(0, description="Global seed: data splits, initialisation, training.")
    data: DataConfig = Field(..., description="Domains, sources, lexicons, decontamination, split.")
    base: BaseConfig = Field(default_factory=BaseConfig, description="The base model stacks are trained on.")
    moe: MoELoRAConfig = Field(default_factory=MoELoRAConfig, description="The MoE-LoRA stack shape.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Continual training.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="Oracle, meta-router, inference gates.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Benchmark evaluation.")
    experiment1: Experiment1Config | None = Field(None, description="Experiment 1 (MoE-LoRA vs single LoRA); "
                                                                    "absent = skipped.")
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig,
                                               description="Run locks and source watchers.")
    lineage: LineageConfig = Field(default_factory=LineageConfig, description="OpenLineage export.")
    source_path: Path | None = Field(None, exclude=True, description="The YAML file the profile came from "
                                                                     "(set by load_profile).")

    @model_validator(mode="after")
    def _domains_known(self) -> "Profile":
        known = set(self.data.domains)
        for i, d in enumerate(self.training.domains or ()):
            if d not in known:
                raise _KeyError(("training", "domains", i), f"domain {d!r} is not a data domain "
                                                            f"(data.domains: {self.data.domains})")
        for d in self.training.per_domain:
            if d not in known:
                raise _KeyError(("training", "per_domain", d), f"domain {d!r} is not a data domain "
                                                               f"(data.domains: {self.data.domains})")
        for i, pair in enumerate(self.router.cross_domain_pairs):
            for d in pair:
                if d not in known:
                    raise _KeyError(("router", "cross_domain_pairs", i), f"domain {d!r} is not a data domain "
                                                                         f"(data.domains: {self.data.domains})")
        if self.experiment1 is not None and self.experiment1.domain not in self.curriculum:
            raise _KeyError(("experiment1", "domain"), f"domain {self.experiment1.domain!r} is not trained "
                                                       f"(curriculum: {self.curriculum})")
        return self

    @model_validator(mode="after")
    def _dtypes_agree(self) -> "Profile":
        # Two different half dtypes: every forward would cast the whole frozen bank (and lose precision).
        compute, frozen = self.base.compute_dtype, self.moe.frozen_dtype
        half = ("float16", "bfloat16")
        if compute in half and frozen in half and compute != frozen:
            raise _KeyError(("base", self.base.kind, "compute_dtype"),
                            f"compute_dtype {compute} does not match moe.frozen_dtype {frozen}: every forward "
                            f"would cast the whole frozen stack bank to {compute}; set both to the same dtype "
                            "(bfloat16 on GPUs that support it)")
        return self

    @property
    def curriculum(self) -> list[str]:
        """Domains in training order: ``training.domains`` or the data section's order."""
        return list(self.training.domains or self.data.domains)

    @field_validator("artifact_root", mode="before")
    @classmethod
    def _root_kind(cls, v: object) -> object:
        if isinstance(v, str) and not is_store_url(v):
            if "://" in v:
                raise ValueError(f"artifact_root {v!r}: only s3://, gs://, file:// URLs or a local folder")
            return Path(v)
        return v.rstrip("/") if isinstance(v, str) else v

    @property
    def remote(self):
        """The object store (a ``RemoteStore``) when ``artifact_root`` is a URL; None for a local folder."""
        if not isinstance(self.artifact_root, str):
            return None
        return resolve_remote(self.artifact_root, self.storage, self.repo_root)

    @property
    def store(self) -> Path:
        """Root of this profile's artifacts: ``<artifact_root>/<name>``; for a URL ``artifact_root``, this
        worker's working copy in its cache folder (``<cache_dir>/work/<hash of the URL>/<name>``)."""
        remote = self.remote
        return (remote.work_root if remote is not None else self.artifact_root) / self.name

    @property
    def catalog_path(self) -> Path:
        """The DuckDB lineage catalog of this profile."""
        return self.store / "catalog.duckdb"

    @property
    def repo_root(self) -> Path:
        """Folder that relative paths in the profile resolve against (the parent of ``configs/``)."""
        return self.source_path.parent.parent if self.source_path else Path.cwd()

    @property
    def context(self) -> StoreContext:
        """Name, store, catalog, seed and repository root: what every stage takes beside its section."""
        return StoreContext(name=self.name, store=self.store, seed=self.seed, repo_root=self.repo_root,
                            source_path=self.source_path, catalog_url=self.catalog_url, remote=self.remote)

    @property
    def catalog_url(self):
        """``$BRAINSTACKS_CATALOG_URL``, else ``lineage.catalog_url`` (a ``SecretStr``); None: the DuckDB file."""
        env = os.environ.get(CATALOG_URL_ENV)
        if env:
            return LineageConfig(catalog_url=env).catalog_url
        return self.lineage.catalog_url

    @property
    def training_setup(self) -> TrainingSetup:
        """The sections a training run reads (``brainstacks_core.training.run``)."""
        return TrainingSetup(context=self.context, base=self.base, moe=self.moe, training=self.training,
                             orchestration=self.orchestration, curriculum=tuple(self.curriculum),
                             experiment1=self.experiment1)

    @property
    def routing_setup(self) -> RoutingSetup:
        """The sections the routing stage reads (``brainstacks_core.routing.run``)."""
        return RoutingSetup(run=self.training_setup, router=self.router)

    @property
    def eval_setup(self) -> EvalSetup:
        """The sections benchmark evaluation reads (``brainstacks_core.evaluation.run``)."""
        return EvalSetup(routing=self.routing_setup, eval=self.eval)


class _KeyError(ValueError):
    """A cross-section check that knows the dotted key it is about."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc, self.message = loc, message


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc, msg = tuple(err.get("loc", ())), err.get("msg", "")
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _KeyError):
            loc, msg = loc + ctx_err.loc, ctx_err.message
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        key = ".".join(str(p) for p in loc) or "<top level>"
        lines.append(f"{path}: {key}: {msg[:1].lower()}{msg[1:]}")
    return "\n".join(lines)


def load_profile(path: str | Path, artifact_root: str | Path | None = None) -> Profile:
    """Read and validate a whole profile YAML file.

    Args:
        path: The YAML file.
        artifact_root: Overrides the file's ``artifact_root`` (tests use a tmp dir).

    Returns:
        The parsed, frozen profile; ``profile.data.base_dir`` is the repository root.

    Raises:
        ProfileError: The file is missing or not a mapping, or any key at any depth is
            unknown, of the wrong type, or inconsistent; one line per problem, each
            ``<file>: <dotted.key>: <what is wrong>``.
    """
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile must be a YAML mapping, got {type(raw).__name__}")
    repo_root = path.resolve().parent.parent
    given = str(artifact_root) if artifact_root is not None else raw.get("artifact_root", "artifacts")
    if is_store_url(given):
        root = given  # an object store: this worker's working copy lives in storage.cache_dir
    elif artifact_root is not None:
        root = Path(artifact_root).resolve()
    else:
        root = Path(given)
        root = root if root.is_absolute() else repo_root / root
    raw["artifact_root"] = root
    data = raw.get("data")
    if isinstance(data, dict):
        raw["data"] = {**data, "base_dir": repo_root}
        raw["data"].setdefault("seed", raw.get("seed", 0))
    try:
        return Profile.model_validate({**raw, "source_path": path.resolve()})
    except ValidationError as exc:
        raise ProfileError(_format_errors(path, exc)) from None


def profile_schema() -> dict[str, Any]:
    """JSON Schema of a profile file (every section, field descriptions and defaults)."""
    schema = Profile.model_json_schema()
    schema.get("properties", {}).pop("source_path", None)
    schema["properties"]["data"]["description"] = Profile.model_fields["data"].description
    return schema
