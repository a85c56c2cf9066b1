"""Typed ``eval:`` profile section: which benchmarks, in which modes, on how many items.

Pure pydantic (no torch, no lm-eval).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    """Benchmark evaluation (paper 4.3.1), scored by lm-evaluation-harness."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Run benchmark evaluation at the end of the pipeline.")
    tasks: tuple[str, ...] = Field((), description="Task names (YAMLs under benchmarks/tasks or generated for the "
                                                   "demo); empty = none.")
    modes: tuple[Literal["base", "ungated", "routed"], ...] = Field(("base", "ungated", "routed"),
                                                                   description="Model modes to score.")
    limit: int | None = Field(None, ge=1, description="Items per task (None = all).")
    batch_size: int = Field(8, ge=1, description="Requests per forward pass.")
