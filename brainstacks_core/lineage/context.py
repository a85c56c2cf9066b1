"""Where one profile's artifacts live and what names them: the context every stage receives.

A stage's functions take their own typed section (``DataConfig``, ``TrainingConfig``,
...) plus this small context; ``brainstacks_core.profile.Profile.context`` builds it,
so no stage imports the profile. Pure pydantic, so it passes between Prefect tasks
as a parameter and validates on the way::

    ctx = StoreContext(name="demo", store=Path("artifacts/demo"), repo_root=Path("."))
    ctx.catalog_path  # artifacts/demo/catalog.duckdb
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from brainstacks_core.lineage.storage_config import RemoteStore


class StoreContext(BaseModel):
    """The profile's name, artifact store, catalog, seed and repository root."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, description="Profile name; part of every catalog URI "
                                                     "(dataset://<name>/...).")
    store: Path = Field(..., description="Root of the profile's artifacts: <artifact_root>/<name> (a URL "
                                         "artifact_root: this worker's working copy in its cache folder).")
    seed: int = Field(0, description="The profile's global seed.")
    repo_root: Path = Field(..., description="Folder relative paths of the profile resolve against.")
    source_path: Path | None = Field(None, description="The profile YAML (named in error messages and "
                                                       "the commands they suggest).")
    catalog_url: SecretStr | None = Field(None, description="PostgreSQL catalog URL (lineage.catalog_url or "
                                                            "$BRAINSTACKS_CATALOG_URL); None: the DuckDB file.")
    remote: RemoteStore | None = Field(None, description="The object store when artifact_root is a URL "
                                                         "(s3://, gs://, file://); None: a local folder.")

    @property
    def catalog_path(self) -> Path:
        """The DuckDB lineage catalog of this profile: ``<store>/catalog.duckdb``."""
        return self.store / "catalog.duckdb"
