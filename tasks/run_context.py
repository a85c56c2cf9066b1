"""What every Prefect task of the project asks of its run: its ids (for the catalog) and when to retry."""

from __future__ import annotations

from typing import Callable

from prefect.runtime import flow_run, task_run


def run_ids() -> dict:
    """``{"flow_run_id", "task_run_id"}`` of the current run (None outside Prefect): recorded with artifacts."""
    return {"flow_run_id": str(flow_run.id) if flow_run.id else None,
            "task_run_id": str(task_run.id) if task_run.id else None}


def retry_unless(*permanent: type[BaseException]) -> Callable:
    """A ``retry_condition_fn``: retry transient failures, never those of types ``permanent``.

    The same input gives the same error for a bad file, a bad request or an untrained
    run, so retrying those only repeats the failure (and its wait).
    """

    def condition(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
        return not isinstance(state.result(raise_on_failure=False), permanent)

    return condition
