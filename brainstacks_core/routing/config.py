"""Typed ``router:`` profile section (paper 3.6): oracle search, the meta-router, inference gates.

Pure pydantic (no torch).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RouterConfig(BaseModel):
    """Oracle discovery, meta-router training and routed inference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Run oracle discovery, router training and routed evaluation.")
    chat_floor: float = Field(0.20, ge=0, le=1, description="Minimum weight of the chat stacks at inference "
                                                            "(paper: 0.20).")
    gate_threshold: float = Field(0.12, ge=0, le=1, description="Stacks whose routed weight is below this are "
                                                                "never loaded (paper: 0.12).")
    max_length: int = Field(256, ge=8, description="Token length of router features, training and inference "
                                                   "alike.")
    greedy_min_gain: float = Field(0.01, ge=0, description="Oracle: add a domain while the loss drops by more "
                                                           "than this.")
    label_blend: float = Field(0.8, ge=0, le=1, description="Oracle target = blend * oracle + (1 - blend) * "
                                                            "nominal-domain label (paper: 80/20).")
