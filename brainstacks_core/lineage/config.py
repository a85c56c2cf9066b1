"""The ``lineage:`` profile section: where OpenLineage run events go.

Pure pydantic; used by ``lineage.openlineage`` (the flows emit through ``tasks/lineage.py``). Example::

    lineage: {openlineage_file: lineage/openlineage.jsonl, marquez_url: http://127.0.0.1:5000}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LineageConfig(BaseModel):
    """OpenLineage export of every flow run (the DuckDB catalog is always written)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
