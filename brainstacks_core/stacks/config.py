"""Typed settings of the stack primitive: the ``moe:`` profile section and null-space bases.

Pure pydantic (no torch), so a profile validates without importing a deep-learning
library. ``MoELoRAConfig`` is also written into every stack file's metadata, and
a stack trained under one config is refused by a layer built with another.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class MoELoRAConfig(BaseModel):
    """Configuration of one MoE-LoRA stack, shared by every projection it wraps (paper 3.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_experts: int = Field(4, ge=1, description="E: experts per wrapped projection (paper: 4).")
    rank: int = Field(16, ge=1, description="r: rank of every expert (paper: 16).")
    alpha: float = Field(16.0, gt=0, description="rsLoRA alpha; the delta is scaled by alpha / sqrt(rank).")
    top_k: int = Field(2, ge=1, description="Experts mixed per token (Shazeer top-k; paper: 2).")
    noisy_router: bool = Field(True, description="Learned softplus noise on the router logits, in training only.")
    aux_loss_coef: float = Field(0.01, ge=0, description="Weight of the load-balance loss added by the trainer.")
    aux_loss_reduction: Literal["sum", "mean"] = Field(
        "sum", description="How the per-projection load-balance losses combine: sum (the paper: a training loss "
                           "of 7.444 vs 0.932 on TinyLlama's 154 projections) or mean (each router's balancing "
                           "gradient 1/154 as strong).")
    router_init_std: float = Field(0.02, gt=0, description="Std of the router's normal initialisation.")
    frozen_dtype: str = Field("float32", description="dtype frozen stacks are stored in: float32, bfloat16 or "
                                                     "float16.")
    targets: tuple[str, ...] = Field(DEFAULT_TARGETS, description="Projection names the stack wraps (suffix "
                                                                  "match, or `re:<regex>`).")

    @field_validator("frozen_dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"must be float32, bfloat16 or float16, got {v!r}")
        return v

    @model_validator(mode="after")
    def _top_k(self) -> "MoELoRAConfig":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        return self

    @property
    def scale(self) -> float:
        """rsLoRA scale alpha / sqrt(r)."""
        return self.alpha / math.sqrt(self.rank)

    @property
    def torch_frozen_dtype(self):
        """The ``torch.dtype`` of ``frozen_dtype`` (imports torch)."""
        import torch

        return getattr(torch, self.frozen_dtype)

    def to_dict(self) -> dict:
        """JSON-able form, as written into stack-file metadata."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict) -> "MoELoRAConfig":
        """Parse a dict (stack-file metadata or a profile section); unknown keys raise."""
        return cls.model_validate(d)


class NullSpaceConfig(BaseModel):
    """How null-space bases are computed from earlier domains' frozen-stack deltas (paper 3.5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(64, ge=1, description="Directions kept per layer: per earlier domain (combine: per_domain) "
                                         "or in total (combine: joint). Paper: 64 (3.5), 32 on TinyLlama (4.2).")
    max_rows: int = Field(4096, ge=1, description="Rows of deltas sampled per layer for the SVD (a cap; with "
                                                  "rows: per_sample the samples are usually fewer).")
    rows: Literal["per_token", "per_sample"] = Field(
        "per_token", description="What one row of the SVD's matrix is: per_token (every real token's delta, "
                                 "sampled up to max_rows) or per_sample (the paper's [nsamples, hdim]: one row per "
                                 "validation sample, the mean of its real tokens' deltas).")
    combine: Literal["per_domain", "joint"] = Field(
        "per_domain", description="per_domain: k directions per earlier domain (its own stacks on its own "
                                  "validation rows), united and re-orthonormalised; joint (paper 3.5): one SVD "
                                  "over every earlier domain's rows with all their frozen stacks on, k in total.")
    full_svd_below: int = Field(512, ge=1, description="Use a full SVD when min(rows, out) is at most this.")
    rel_tol: float = Field(1e-4, ge=0, description="Drop directions with singular value < rel_tol * largest.")
    oversample: int = Field(8, ge=0, description="Extra columns of the randomized SVD (torch.svd_lowrank).")
    niter: int = Field(4, ge=0, description="Power iterations of the randomized SVD.")
