"""OpenLineage run events and Prefect asset events of every flow, from Prefect's flow state hooks.

A flow opts in with one argument: ``@flow(name="prepare-data", **lineage_hooks(inputs))``,
where ``inputs(profile, parameters)`` names the catalog URIs the run reads, known
before it starts.

* Running: an OpenLineage ``START`` event (run id = the Prefect flow run id; a
  subflow names its parent and root run in the ``parent`` facet) with those inputs,
  each at its latest catalog version (name only when the catalog has none yet);
* Completed: ``COMPLETE`` with the datasets the run recorded in the catalog
  (``brainstacks_core.lineage.openlineage.run_datasets``: versions as facets), and
  the asset events ``prefect.assets.materialize`` emits: ``prefect.asset.referenced``
  per input, ``prefect.asset.materialization.succeeded`` per output (upstream
  assets related, payload = catalog version, kind, rows);
* Failed or Crashed: ``FAIL`` with the ``errorMessage`` facet (message and stack
  trace) and whatever the run recorded before it failed; Cancelling: ``ABORT``.

The hooks read ``config_path`` and ``artifact_root`` from the run's parameters (every
flow has both), once per flow run (the START hook's profile serves the final event).
A hook never fails a flow: Prefect logs a hook's exception and goes on, and the
DuckDB catalog stays the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from prefect.logging.loggers import flow_run_logger

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.openlineage import LineageDataset, OpenLineageEmitter, known_inputs, run_datasets
from brainstacks_core.lineage.uris import asset_key
from brainstacks_core.lineage.versioning import code_version
from brainstacks_core.profile import Profile, load_profile

Inputs = Callable[[Profile, dict], list[str]]
_RUNS: dict[str, tuple[Profile, Inputs | None]] = {}  # flow run id -> its profile (read once) and inputs


def lineage_hooks(inputs: Inputs | None = None) -> dict[str, list]:
    """The ``@flow`` keyword arguments that make a flow emit its lineage (see the module docstring).

    Args:
        inputs: ``(profile, flow parameters) -> catalog URIs`` the run reads (its START inputs).
    """

    def start(flow, flow_run, state) -> None:  # noqa: ANN001 - Prefect's hook signature
        """Running: the ``START`` event with the run's known inputs."""
        _emit(flow, flow_run, "START", inputs_fn=inputs)

    return {"on_running": [start], "on_completion": [emit_complete], "on_failure": [emit_fail],
            "on_crashed": [emit_fail], "on_cancellation": [emit_abort]}


def data_inputs(profile: Profile, params: dict) -> list[str]:
    """START inputs of a preparation (prepare-data, watch-sources, the pipeline): sources and eval sets."""
    from brainstacks_core.data.pipeline import input_uris

    return input_uris(profile.data)


def training_inputs(profile: Profile, params: dict) -> list[str]:
    """START inputs of a training run: the base and every curriculum domain's train/val/test split."""
    from brainstacks_core.training.run import input_uris

    return input_uris(profile.training_setup)


def routing_inputs(profile: Profile, params: dict) -> list[str]:
    """START inputs of train-router: the base, the run's frozen stacks, router and test splits."""
    from brainstacks_core.routing.run import input_uris

    return input_uris(profile.routing_setup, params.get("run_name") or "main")


def eval_inputs(profile: Profile, params: dict) -> list[str]:
    """START inputs of an evaluation: what routing reads, plus the run's meta-router."""
    run = params.get("run_name") or "main"
    return routing_inputs(profile, params) + [f"router://{profile.name}/{run}"]


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


def _profile(run_id: str, params: dict, state: str, inputs_fn: Inputs | None) -> tuple[Profile, Inputs | None]:
    """The run's profile: read by its START hook, reused (then dropped) by the final event."""
    known = _RUNS.pop(run_id, None) if state != "START" else None
    if known is None:
        known = (load_profile(params["config_path"], params.get("artifact_root")), inputs_fn)
    if state == "START":
        _RUNS[run_id] = known
    return known


def _emit(flow, flow_run, state: str, error=None, assets: bool = False,  # noqa: ANN001
          inputs_fn: Inputs | None = None) -> None:
    import prefect

    params = dict(flow_run.parameters or {})
    logger = flow_run_logger(flow_run, flow)
    run_id = str(flow_run.id)
    try:
        profile, inputs_fn = _profile(run_id, params, state, inputs_fn)
    except Exception as exc:  # noqa: BLE001 - no profile: nowhere to write
        logger.warning("openlineage %s not emitted: the profile cannot be loaded (%s)", state, exc)
        return
    if not profile.lineage.openlineage:
        return
    cat = Catalog.for_context(profile.context)
    if state == "START":
        inputs, outputs = (known_inputs(cat, inputs_fn(profile, params)) if inputs_fn else []), []
    else:
        inputs, outputs = run_datasets(cat, run_id)
    location = cat.location
    if profile.remote is not None:  # an object store: no host path in the events (parameters, DuckDB file)
        params = {k: _portable(v, profile) for k, v in params.items()}
        location = location if cat.shared else "catalog.duckdb"
    emitter = OpenLineageEmitter(profile.lineage, profile.store, profile.name, location)
    emitter.emit(state, flow.name, run_id, inputs, outputs, parent=_parent(flow_run), error=error,
                 engine={"name": "prefect", "version": prefect.__version__}, parameters=params,
                 description=(flow.description or "").strip().split("\n")[0] or None, code_version=code_version())
    logger.info("openlineage %s: %d inputs, %d outputs -> %s", state, len(inputs), len(outputs), emitter.file)
    if assets and outputs:
        emit_asset_events(run_id, flow_run.name, inputs, outputs)


def _portable(value, profile: Profile):  # noqa: ANN001 - any parameter value
    """An absolute path parameter as a path relative to the checkout (else its file name); others unchanged."""
    if not isinstance(value, str) or not Path(value).is_absolute():
        return value
    p = Path(value).resolve()
    return p.relative_to(profile.repo_root.resolve()).as_posix() if p.is_relative_to(profile.repo_root.resolve()) \
        else p.name


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


def emit_asset_events(run_id: str, run_name: str | None, inputs: list[LineageDataset],
                      outputs: list[LineageDataset]) -> int:
    """The events ``prefect.assets.materialize`` emits, for datasets known only after the run.

    Returns:
        The number of materialization events emitted.
    """
    from prefect.events import emit_event

    ups = [asset_key(d.uri) for d in inputs]
    for key in dict.fromkeys(ups):
        emit_event(event="prefect.asset.referenced", resource={"prefect.resource.id": key}, related=[])
    related = [{"prefect.resource.id": k, "prefect.resource.role": "asset"} for k in dict.fromkeys(ups)]
    related += [{"prefect.resource.id": "brainstacks", "prefect.resource.role": "asset-materialized-by"},
                {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run",
                 "prefect.resource.name": run_name or run_id}]
    n = 0
    for d in outputs:
        key = asset_key(d.uri)
        emit_event(event="prefect.asset.materialization.succeeded",
                   resource={"prefect.resource.id": key, "prefect.resource.name": d.uri},
                   related=related, payload={"version": d.version, "kind": d.kind, "rows": d.rows,
                                             "sha256": d.sha256, "path": d.path})
        n += 1
    return n
