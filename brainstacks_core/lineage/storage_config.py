"""Where a profile's artifacts live when ``artifact_root`` is a URL: the ``storage:`` section.

``artifact_root`` is a local folder by default (today's layout, nothing here applies).
Set it to ``s3://bucket/prefix``, ``gs://bucket/prefix`` or ``file:///shared/folder`` and
the profile's immutable artifacts are published to that object store as content-addressed
blobs (:mod:`brainstacks_core.lineage.blob_store`), while each worker keeps its working copy
in a local cache folder with a byte budget. Pure pydantic (no fsspec import)::

    artifact_root: s3://ml-artifacts/brainstacks
    storage: {storage_options: {region_name: eu-west-1}, cache_bytes: 20000000000}

Credentials never go here: they come from the standard places (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, instance roles;
``GOOGLE_APPLICATION_CREDENTIALS``); the endpoint from ``AWS_ENDPOINT_URL`` or
``storage_options.endpoint_url``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

CACHE_DIR_ENV = "BRAINSTACKS_CACHE_DIR"
URL_SCHEMES = ("s3://", "gs://", "gcs://", "file://", "memory://")
# Keys of fsspec storage options that carry secrets: refused in a profile (they would be logged and hashed).
SECRET_OPTION_KEYS = ("key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                      "aws_session_token", "session_token", "access_key", "secret_key", "credentials")


def is_store_url(root: object) -> bool:
    """Whether an ``artifact_root`` value names an object store (``s3://``, ``gs://``, ``file://``, ...)."""
    return isinstance(root, str) and root.startswith(URL_SCHEMES)


def default_cache_dir() -> Path:
    """``$BRAINSTACKS_CACHE_DIR``, else ``~/.cache/brainstacks``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "brainstacks"


class StorageConfig(BaseModel):
    """Object-store settings of a profile whose ``artifact_root`` is a URL (ignored for a local folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Non-secret fsspec options of the store, e.g. {endpoint_url: "
                                          "http://minio:9000, region_name: eu-west-1}. Credentials come from "
                                          "AWS_* / GOOGLE_* environment variables or instance roles, never "
                                          "from here (a key named like a secret is refused).")
    cache_dir: Path | None = Field(None, description=f"This worker's local read-through cache and working copy "
                                                     f"(default ${CACHE_DIR_ENV}, else ~/.cache/brainstacks); "
                                                     "relative paths resolve against the repository root.")
    cache_bytes: int = Field(20 * 10**9, gt=0, description="Byte budget of the cached blobs (least recently "
                                                           "used evicted first).")
    connect_timeout_s: float = Field(10.0, gt=0, description="Connect/read timeout of one request to the store "
                                                             "(an unreachable endpoint fails after one try).")

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        bad = sorted(k for k in v if k.lower() in SECRET_OPTION_KEYS)
        if bad:
            raise ValueError(f"storage_options may not hold credentials ({', '.join(bad)}): set AWS_ACCESS_KEY_ID "
                             "/ AWS_SECRET_ACCESS_KEY (or GOOGLE_APPLICATION_CREDENTIALS) in the environment")
        return v


class RemoteStore(BaseModel):
    """The resolved object store of one profile: what a stage needs to publish and fetch blobs.

    ``url`` is the root the user set (``s3://bucket/prefix``); blobs are shared by every
    profile under it, pointers are per profile.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(..., description="The artifact_root URL, without a trailing slash.")
    storage_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    cache_dir: Path = Field(..., description="This worker's cache folder (blobs/ and work/ inside).")
    cache_bytes: int = Field(20 * 10**9, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)

    @property
    def work_root(self) -> Path:
        """The worker's local working copy of this store: ``<cache_dir>/work/<hash of url>``."""
        return self.cache_dir / "work" / hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]

    @property
    def blob_cache(self) -> Path:
        """The read-through blob cache: ``<cache_dir>/blobs``."""
        return self.cache_dir / "blobs"


def resolve_remote(url: str, cfg: StorageConfig, repo_root: Path) -> RemoteStore:
    """The :class:`RemoteStore` of ``artifact_root`` URL ``url`` with the profile's ``storage:`` section."""
    cache = cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir()
    cache = cache if cache.is_absolute() else repo_root / cache
    return RemoteStore(url=url.rstrip("/"), storage_options=dict(cfg.storage_options), cache_dir=cache.resolve(),
                       cache_bytes=cfg.cache_bytes, connect_timeout_s=cfg.connect_timeout_s)
