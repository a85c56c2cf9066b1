"""OpenLineage run events and Prefect asset events of every flow, from Prefect's flow state hooks.

A flow opts in with one argument: ``@flow(name="prepare-data", **lineage_hooks())``.

* Running: an OpenLineage ``START`` event (run id = the Prefect flow run id; a
  subflow names its parent and root run in the ``parent`` facet);
* Completed: ``COMPLETE`` with the datasets the run recorded in the catalog
  (``brainstacks_core.lineage.openlineage.run_datasets``: versions as facets), and
  the asset events ``prefect.assets.materialize`` emits: ``prefect.asset.referenced``
  per input, ``prefect.asset.materialization.succeeded`` per output (upstream
  assets related, payload = catalog version, kind, rows);
* Failed or Crashed: ``FAIL`` with the ``errorMessage`` facet (message and stack
  trace) and whatever the run recorded before it failed; Cancelling: ``ABORT``.

The hooks read ``config_path`` and ``artifact_root`` from the run's parameters (every
flow has both). A hook never fails a flow: Prefect logs a hook's exception and
goes on, and the DuckDB catalog stays the record.
"""

from __future__ import annotations

import re

from prefect.logging.loggers import flow_run_logger

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.openlineage import LineageDataset, OpenLineageEmitter, run_datasets
from brainstacks_core.lineage.versioning import code_version
from brainstacks_core.profile import load_profile


def lineage_hooks() -> dict[str, list]:
    """The ``@flow`` keyword arguments that make a flow emit its lineage (see the module docstring)."""
    return {"on_running": [emit_start], "on_completion": [emit_complete], "on_failure": [emit_fail],
            "on_crashed": [emit_fail], "on_cancellation": [emit_abort]}


def emit_start(flow, flow_run, state) -> None:  # noqa: ANN001 - Prefect's hook signature
    """Running: the ``START`` event."""
    _emit(flow, flow_run, "START")


def emit_complete(flow, flow_run, state) -> None:  # noqa: ANN001
    """Completed: ``COMPLETE`` with the run's datasets, then the Prefect asset events."""
    _emit(flow, flow_run, "COMPLETE", assets=True)


def emit_fail(flow, flow_run, state) -> None:  # noqa: ANN001
    """Failed / Crashed: ``FAIL`` with the error message facet."""
    _emit(flow, flow_run, "FAIL", error=_error(state))


def emit_abort(flow, flow_run, state) -> None:  # noqa: ANN001
    """Cancelling: ``ABORT``."""
    _emit(flow, flow_run, "ABORT")


def _error(state) -> BaseException | str:  # noqa: ANN001
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - the message is enough
        exc = None
    return exc if isinstance(exc, BaseException) else (state.message or state.name)


def _emit(flow, flow_run, state: str, error=None, assets: bool = False) -> None:  # noqa: ANN001
    import prefect

    params = dict(flow_run.parameters or {})
    logger = flow_run_logger(flow_run, flow)
    try:
        profile = load_profile(params["config_path"], params.get("artifact_root"))
    except Exception as exc:  # noqa: BLE001 - no profile: nowhere to write
        logger.warning("openlineage %s not emitted: the profile cannot be loaded (%s)", state, exc)
        return
    if not profile.lineage.openlineage:
        return
    run_id = str(flow_run.id)
    inputs, outputs = ([], []) if state == "START" else run_datasets(Catalog(profile.catalog_path), run_id)
    emitter = OpenLineageEmitter(profile.lineage, profile.store, profile.name, profile.catalog_path)
    emitter.emit(state, flow.name, run_id, inputs, outputs, parent=_parent(flow_run), error=error,
                 engine={"name": "prefect", "version": prefect.__version__}, parameters=params,
                 description=(flow.description or "").strip().split("\n")[0] or None, code_version=code_version())
    logger.info("openlineage %s: %d inputs, %d outputs -> %s", state, len(inputs), len(outputs), emitter.file)
    if assets and outputs:
        emit_asset_events(run_id, flow_run.name, inputs, outputs)


def _parent(flow_run) -> dict | None:  # noqa: ANN001
    """The calling flow run and the root of the chain (subflows), read from the Prefect API."""
    if not flow_run.parent_task_run_id:
        return None
    from prefect.client.orchestration import get_client

    chain = []
    with get_client(sync_client=True) as client:
        current = flow_run
        while current.parent_task_run_id and len(chain) < 16:
            current = client.read_flow_run(client.read_task_run(current.parent_task_run_id).flow_run_id)
            chain.append((str(current.id), client.read_flow(current.flow_id).name))
    return {"run_id": chain[0][0], "job": chain[0][1], "root_run_id": chain[-1][0], "root_job": chain[-1][1]}


def asset_key(uri: str) -> str | None:
    """The Prefect asset key of a catalog URI: the URI itself when Prefect accepts it, else
    ``brainstacks://<scheme>/<rest>`` with other characters as ``/`` (None if still invalid)."""
    from prefect.assets import Asset

    for key in (uri, "brainstacks://" + re.sub(r"[^A-Za-z0-9._/-]+", "/", uri.replace("://", "/", 1)).strip("/")):
        try:
            return Asset(key=key).key
        except ValueError:
            continue
    return None


def emit_asset_events(run_id: str, run_name: str | None, inputs: list[LineageDataset],
                      outputs: list[LineageDataset]) -> int:
    """The events ``prefect.assets.materialize`` emits, for datasets known only after the run.

    Returns:
        The number of materialization events emitted.
    """
    from prefect.events import emit_event

    ups = [k for k in (asset_key(d.uri) for d in inputs) if k]
    for key in dict.fromkeys(ups):
        emit_event(event="prefect.asset.referenced", resource={"prefect.resource.id": key}, related=[])
    related = [{"prefect.resource.id": k, "prefect.resource.role": "asset"} for k in dict.fromkeys(ups)]
    related += [{"prefect.resource.id": "brainstacks", "prefect.resource.role": "asset-materialized-by"},
                {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run",
                 "prefect.resource.name": run_name or run_id}]
    n = 0
    for d in outputs:
        key = asset_key(d.uri)
        if key is None:
            continue
        emit_event(event="prefect.asset.materialization.succeeded",
                   resource={"prefect.resource.id": key, "prefect.resource.name": d.uri},
                   related=related, payload={"version": d.version, "kind": d.kind, "rows": d.rows,
                                             "sha256": d.sha256, "path": d.path})
        n += 1
    return n
