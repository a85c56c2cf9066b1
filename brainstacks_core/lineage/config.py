"""The ``lineage:`` profile section: where the catalog lives and where OpenLineage run events go.

Pure pydantic; used by ``lineage.openlineage`` (the flows emit through ``tasks/lineage.py``). Example::

    lineage: {openlineage_file: lineage/openlineage.jsonl, marquez_url: http://127.0.0.1:5000}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

CATALOG_URL_ENV = "BRAINSTACKS_CATALOG_URL"


class LineageConfig(BaseModel):
    """The catalog's backend and the OpenLineage export of every flow run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog_url: SecretStr | None = Field(
        None, description="null: the embedded DuckDB file <store>/catalog.duckdb (one machine). "
                          "postgresql://user[:password]@host:port/db[?sslmode=require]: the catalog in PostgreSQL "
                          "(many hosts; run and base-build locks become advisory locks with fencing epochs). "
                          f"${CATALOG_URL_ENV} overrides it, so the password need not be in the YAML "
                          "(PGPASSWORD and ~/.pgpass work too). Shown masked everywhere.")

    @field_validator("catalog_url")
    @classmethod
    def _postgres_only(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("catalog_url must be a postgresql:// URL (leave it unset for the DuckDB file)")
        return v

    openlineage: bool = Field(True, description="Emit OpenLineage START/COMPLETE/FAIL run events for every flow.")
    openlineage_file: str = Field("lineage/openlineage.jsonl", description="JSONL file of the events, relative "
                                                                           "to the profile's store "
                                                                           "(<artifact_root>/<name>).")
    marquez_url: str | None = Field(None, description="Also POST every event to this Marquez/OpenLineage HTTP "
                                                      "endpoint (e.g. http://127.0.0.1:5000); null: file only, "
                                                      "or $OPENLINEAGE_URL when set.")
    namespace: str = Field("brainstacks", description="OpenLineage namespace of datasets (named by their catalog "
                                                        "URI); jobs are in <namespace>.<profile name>.")
    http_timeout_s: float = Field(5.0, gt=0, description="Timeout of one POST to marquez_url (a failing endpoint "
                                                         "is logged; the file is always written).")
