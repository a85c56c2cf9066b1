"""The ``orchestration:`` profile section: how concurrent requests and watchers behave.

Pure pydantic, like every section. Example::

    orchestration: {on_busy: wait, watch_interval_seconds: 600}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OrchestrationConfig(BaseModel):
    """Locks, debounce and watchers of a profile's runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_busy: Literal["wait", "skip"] = Field(
        "wait", description="A training request for a run folder another process is writing: wait for it "
                            "(then resume, retraining nothing it finished) or skip with a log line.")
    lock_timeout_seconds: float | None = Field(
        None, ge=0, description="With on_busy=wait, give up after this many seconds (null: wait as long as it takes).")
    watch_interval_seconds: int = Field(
        900, ge=10, description="Interval of the scheduled watch-sources deployment (watch-<profile> in "
                                "prefect.yaml repeats it as `schedules: [{interval: N}]`; tests/test_watch.py "
                                "checks they agree). The flow checks sources cheaply and prepares only changed "
                                "domains.")
