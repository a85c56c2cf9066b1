"""OpenLineage run events of the pipeline's runs, built from the DuckDB catalog (no Prefect here).

What a run read and wrote is already in the catalog: every artifact a step records
carries the Prefect flow run id, and its input edges. :func:`run_datasets` turns
that into the run's OpenLineage inputs and outputs (COMPLETE / FAIL);
:func:`known_inputs` the inputs a run names before it starts (START); :class:`OpenLineageEmitter`
builds ``START`` / ``COMPLETE`` / ``FAIL`` / ``ABORT`` :class:`RunEvent` objects
with ``openlineage-python``'s own classes and emits them through openlineage
transports:

* always a JSONL file (``lineage.openlineage_file``, default
  ``<store>/lineage/openlineage.jsonl``), appended under a file lock
  (``openlineage_io.LockedFileTransport``: two workers may share the folder);
* an OpenLineage HTTP endpoint (Marquez) through ``HttpTransport`` when
  ``lineage.marquez_url`` or ``$OPENLINEAGE_URL`` is set, after the file: a failing
  endpoint is logged, not raised (the file has the event); a failed file write raises. ``OPENLINEAGE_DISABLED=true``
  turns it all off.

Naming: jobs in namespace ``<lineage.namespace>.<profile>`` named after the flow;
datasets in ``lineage.namespace`` named by their catalog URI (``dataset://demo/math/train``),
with the catalog version as the standard ``version`` facet
(``DatasetVersionDatasetFacet``), row counts and file sizes as input/output
statistics, and a ``brainstacks`` facet (kind, path, sha256, code version). The two
custom facets (``BrainstacksDatasetFacet``, ``BrainstacksRunFacet``) have JSON Schema
files shipped as package data (``lineage/schemas/``); each facet's ``_schemaURL`` is
``SCHEMA_BASE`` + its file + ``#/$defs/<name>``, the file's ``$id``. The run
id is the Prefect flow run id when there is one. Memory: one event at a time (about
1 KB per dataset); nothing depends on model shapes or grows with tokens seen.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated import (
    dataset_version_dataset,
    documentation_job,
    error_message_run,
    execution_parameters_run,
    input_statistics_input_dataset,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
)
from openlineage.client.generated.base import DatasetFacet, RunFacet
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.uuid import generate_new_uuid

from brainstacks_core.lineage.config import LineageConfig
from brainstacks_core.lineage.openlineage_io import LockedFileConfig, LockedFileTransport

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/brainstacks/brainstacks"
FACET_VERSION = "1-0-0"
SCHEMA_BASE = ("https://raw.githubusercontent.com/brainstacks/brainstacks/main/brainstacks_core/lineage/schemas/"
               f"{FACET_VERSION}/")
SCHEMA_DIR = Path(__file__).parent / "schemas" / FACET_VERSION


def facet_schema_url(name: str) -> str:
    """``_schemaURL`` of custom facet ``name``: its shipped JSON Schema file and the ``$defs`` entry."""
    return f"{SCHEMA_BASE}{name}.json#/$defs/{name}"
_ROW_KINDS = {"dataset"}


@dataclass(frozen=True)
class LineageDataset:
    """One catalog artifact as an OpenLineage dataset.

    Attributes:
        uri: catalog URI (the dataset name), e.g. ``dataset://demo/math/train``.
        version: catalog version (the ``version`` facet); None: not in the catalog yet (a START input).
        kind: catalog kind (``dataset``, ``stack``, ``source``, ...).
        path: file, if any.
        sha256: checksum of that file, if recorded.
        code_version: code version of the producer.
        rows: row count (prepared dataset splits), else None.
        size: file size in bytes, if the file exists.
    """

    uri: str
    version: str | None
    kind: str
    path: str | None = None
    sha256: str | None = None
    code_version: str | None = None
    rows: int | None = None
    size: int | None = None


def dataset_from_artifact(art: dict) -> LineageDataset:
    """A catalog artifact row (``Catalog.get``) as a :class:`LineageDataset`."""
    meta = art.get("metadata") or {}
    rows = None
    if art.get("kind") in _ROW_KINDS and isinstance(meta.get("counts"), dict):
        rows = meta["counts"].get(meta.get("split"))
    path = art.get("path")
    size = os.path.getsize(path) if path and os.path.isfile(path) else None
    return LineageDataset(uri=art["uri"], version=art["version"], kind=art["kind"], path=path,
                          sha256=art.get("sha256"), code_version=art.get("code_version"),
                          rows=int(rows) if rows is not None else None, size=size)


def known_inputs(catalog, uris: Sequence[str]) -> list[LineageDataset]:
    """The datasets a run names before it starts, each at its latest catalog version.

    A URI the catalog does not know yet (a first preparation's sources) is kept with
    ``version`` None and its scheme as kind: START still says what the run reads.
    """
    out = []
    for uri in dict.fromkeys(uris):
        art = catalog.latest(uri)
        out.append(dataset_from_artifact(art) if art is not None
                   else LineageDataset(uri=uri, version=None, kind=uri.split(":", 1)[0]))
    return out


def run_datasets(catalog, run_id: str) -> tuple[list[LineageDataset], list[LineageDataset]]:
    """What one run read and wrote, from the catalog's events and edges.

    Outputs: artifacts the run recorded (``created`` or ``used``) that have inputs.
    Inputs: artifacts it recorded without inputs (sources, eval sets, a hub base),
    artifacts it marked ``read`` (``Catalog.record_reads``), and the direct inputs of
    its outputs that it did not produce itself.

    Args:
        catalog: a ``Catalog``.
        run_id: the flow run id the steps recorded.

    Returns:
        ``(inputs, outputs)``, each sorted by URI then version.
    """
    recorded = catalog.run_artifacts([run_id])
    outputs = {a["version"]: a for a in recorded if a["inputs"] and a["events"] & {"created", "used"}}
    inputs = {a["version"]: a for a in recorded if a["version"] not in outputs}
    for a in outputs.values():
        for v in a["inputs"]:
            if v not in outputs and v not in inputs:
                art = catalog.get(v)
                if art is not None:
                    inputs[v] = art
    order = lambda arts: sorted((dataset_from_artifact(a) for a in arts), key=lambda d: (d.uri, d.version))  # noqa
    return order(inputs.values()), order(outputs.values())


@attr.define
class BrainstacksDatasetFacet(DatasetFacet):
    """Where a dataset lives and which code produced it (the catalog row)."""

    kind: str
    path: str | None = attr.field(default=None)
    sha256: str | None = attr.field(default=None)
    codeVersion: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("BrainstacksDatasetFacet")


@attr.define
class BrainstacksRunFacet(RunFacet):
    """The profile, its catalog and the code version of a run."""

    profile: str
    catalog: str
    codeVersion: str | None = attr.field(default=None)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return facet_schema_url("BrainstacksRunFacet")


def _input(d: LineageDataset, namespace: str) -> InputDataset:
    stats = {"inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
        rowCount=d.rows, size=d.size)} if d.rows is not None or d.size is not None else {}
    return InputDataset(namespace=namespace, name=d.uri, facets=_facets(d), inputFacets=stats)


def _output(d: LineageDataset, namespace: str) -> OutputDataset:
    stats = {"outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        rowCount=d.rows, size=d.size)} if d.rows is not None or d.size is not None else {}
    return OutputDataset(namespace=namespace, name=d.uri, facets=_facets(d), outputFacets=stats)


def _facets(d: LineageDataset) -> dict:
    out: dict[str, Any] = {} if d.version is None else {
        "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=d.version)}
    out["brainstacks"] = BrainstacksDatasetFacet(kind=d.kind, path=d.path, sha256=d.sha256,
                                                 codeVersion=d.code_version, producer=PRODUCER)
    return out


class OpenLineageEmitter:
    """Builds and emits the run events of one profile (file, and HTTP when configured).

    Args:
        cfg: the profile's ``lineage:`` section.
        store: the profile's store (a relative ``openlineage_file`` resolves against it).
        profile: the profile name (part of the job namespace).
        catalog_path: the profile's catalog (in the run facet).
    """

    def __init__(self, cfg: LineageConfig, store: Path, profile: str, catalog_path: Path | None = None) -> None:
        self.cfg, self.profile = cfg, profile
        file = Path(cfg.openlineage_file)
        self.file = file if file.is_absolute() else Path(store) / file
        self.catalog_path = catalog_path or Path(store) / "catalog.duckdb"
        self._client: OpenLineageClient | None = None
        self._http: OpenLineageClient | None = None

    @property
    def job_namespace(self) -> str:
        return f"{self.cfg.namespace}.{self.profile}"

    @property
    def url(self) -> str | None:
        """The HTTP endpoint events also go to (``marquez_url``, else ``$OPENLINEAGE_URL``)."""
        return self.cfg.marquez_url or os.environ.get("OPENLINEAGE_URL") or None

    def client(self) -> OpenLineageClient:
        """openlineage's client over the locked file transport (a failed write raises)."""
        if self._client is None:
            self._client = OpenLineageClient(transport=LockedFileTransport(
                LockedFileConfig(log_file_path=str(self.file))))
        return self._client

    def http_client(self) -> OpenLineageClient | None:
        """openlineage's client over HTTP (Marquez) when configured: best effort, after the file."""
        if self.url is None:
            return None
        if self._http is None:
            self._http = OpenLineageClient(transport=HttpTransport(HttpConfig.from_dict({
                "type": "http", "url": self.url, "timeout": self.cfg.http_timeout_s,
                "retry": {"total": 2, "backoff_factor": 0.3, "status_forcelist": [500, 502, 503, 504],
                          "allowed_methods": ["HEAD", "POST"]}})))
        return self._http

    def build(self, state: str, job: str, run_id: str | None = None, inputs: Sequence[LineageDataset] = (),
              outputs: Sequence[LineageDataset] = (), *, parent: dict | None = None,
              error: BaseException | str | None = None, engine: dict | None = None,
              parameters: dict | None = None, description: str | None = None,
              code_version: str | None = None) -> RunEvent:
        """One :class:`RunEvent`.

        Args:
            state: ``START``, ``COMPLETE``, ``FAIL`` or ``ABORT``.
            job: the job (flow) name.
            run_id: a UUID (the Prefect flow run id); None: a new UUIDv7.
            inputs, outputs: the run's datasets (:func:`run_datasets`).
            parent: ``{"run_id", "job", "root_run_id", "root_job"}`` of the calling run (subflows).
            error: the exception (or its message) of a failed run: the ``errorMessage`` facet.
            engine: ``{"name", "version"}`` of the orchestrator (``processing_engine`` facet).
            parameters: the run's parameters (``executionParameters`` facet; values as text).
            description: the job's description (``documentation`` facet).
            code_version: the project's code version (``brainstacks`` run facet).
        """
        run_facets: dict[str, Any] = {"brainstacks": BrainstacksRunFacet(
            profile=self.profile, catalog=str(self.catalog_path), codeVersion=code_version, producer=PRODUCER)}
        if engine:
            run_facets["processing_engine"] = processing_engine_run.ProcessingEngineRunFacet(
                version=str(engine.get("version")), name=engine.get("name"),
                openlineageAdapterVersion=_ol_version())
        if parameters:
            run_facets["executionParameters"] = execution_parameters_run.ExecutionParametersRunFacet(parameters=[
                execution_parameters_run.ExecutionParameter(key=k, value=json.dumps(v, default=str))
                for k, v in sorted(parameters.items())])
        if parent and parent.get("run_id"):
            root = None
            if parent.get("root_run_id"):
                root = parent_run.Root(run=parent_run.RootRun(runId=str(parent["root_run_id"])),
                                       job=parent_run.RootJob(namespace=self.job_namespace,
                                                              name=parent["root_job"]))
            run_facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=str(parent["run_id"])),
                job=parent_run.Job(namespace=self.job_namespace, name=parent["job"]), root=root)
        if error is not None:
            trace = "".join(traceback.format_exception(error)) if isinstance(error, BaseException) else None
            message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=message, programmingLanguage="python", stackTrace=trace)
        job_facets: dict[str, Any] = {"jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration=(engine or {}).get("name", "brainstacks").upper(), jobType="FLOW")}
        if description:
            job_facets["documentation"] = documentation_job.DocumentationJobFacet(description=description)
        return RunEvent(eventType=RunState(state), eventTime=datetime.now(timezone.utc).isoformat(),
                        run=Run(runId=str(run_id or generate_new_uuid()), facets=run_facets),
                        job=Job(namespace=self.job_namespace, name=job, facets=job_facets),
                        inputs=[_input(d, self.cfg.namespace) for d in inputs],
                        outputs=[_output(d, self.cfg.namespace) for d in outputs], producer=PRODUCER)

    def emit(self, state: str, job: str, run_id: str | None = None, inputs: Sequence[LineageDataset] = (),
             outputs: Sequence[LineageDataset] = (), **facets: Any) -> RunEvent | None:
        """Build (:meth:`build`) and emit one event; None when ``lineage.openlineage`` is off."""
        if not self.cfg.openlineage:
            return None
        event = self.build(state, job, run_id, inputs, outputs, **facets)
        self.client().emit(event)  # the record of truth: a failed write fails the caller
        http = self.http_client()
        if http is not None:
            try:
                http.emit(event)
            except Exception as exc:  # noqa: BLE001 - a dead Marquez must not fail a run; the file has the event
                log.warning("openlineage: %s not reached (%s); the event is in %s", self.url, exc, self.file)
        log.debug("openlineage %s %s/%s run %s: %d inputs, %d outputs -> %s%s", state, self.job_namespace, job,
                 event.run.runId, len(inputs), len(outputs), self.file, f" and {self.url}" if self.url else "")
        return event


def _ol_version() -> str:
    from importlib.metadata import version

    return version("openlineage-python")
