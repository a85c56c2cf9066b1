"""Typed ``router:`` profile section (paper 3.6): oracle search, the meta-router, inference gates.

:class:`RoutingSetup` is what the routing stage of a run needs (the trained run's
sections and ``router:``), built by ``Profile.routing_setup``. Pure pydantic (no torch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from brainstacks_core.training.config import TrainingSetup


class RouterConfig(BaseModel):
    """Oracle discovery, meta-router training and routed inference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Run oracle discovery, router training and routed evaluation.")
    chat_floor: float = Field(0.20, ge=0, le=1, description="Minimum weight of the chat stacks at inference "
                                                            "(paper: 0.20).")
    gate_threshold: float = Field(0.12, ge=0, le=1, description="Stacks whose routed weight is below this are "
                                                                "never loaded (paper: 0.12).")
    store_budget_mb: float | None = Field(4096.0, gt=0, description="Routed inference: MB of attached stacks "
                                          "the stack store keeps (LRU; one bf16 Gemma-3-12B stack is ~538 MB, so "
                                          "4096 keeps 7 of 10); null: no limit.")
    max_length: int = Field(256, ge=8, description="Token length of router features, training and inference "
                                                   "alike.")
    greedy_min_gain: float = Field(0.01, ge=0, description="Oracle: add a domain while the loss drops by more "
                                                           "than this.")
    label_blend: float = Field(0.8, ge=0, le=1, description="Oracle target = blend * oracle + (1 - blend) * "
                                                            "nominal-domain label (paper: 80/20).")
    # ---- meta-router (routing/features.py, router.py, train_router.py)
    feature_layer: int | None = Field(None, description="Middle hidden-state layer mixed with the last one "
                                                        "(None: num_hidden_layers // 2).")
    feature_mix: float = Field(0.45, ge=0, le=1, description="Router features = mix * middle layer + "
                                                             "(1 - mix) * last layer (paper 3.6: 0.45 x mid + "
                                                             "0.55 x last).")
    hidden: int = Field(512, ge=8, description="Router width: tokens are projected to this (paper: 512).")
    heads: int = Field(8, ge=1, description="Attention heads of the global and per-domain attention.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in the router's fusion MLP.")
    epochs: int = Field(8, ge=1, description="Router training epochs (paper: 8).")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine schedule to 0).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay of the router.")
    batch_size: int = Field(32, ge=1, description="Router training batch (prompts).")
    feature_batch_size: int = Field(16, ge=1, description="Prompts per base forward when computing features.")
    margin_weight: float = Field(0.1, ge=0, description="Weight of the confidence-margin term beside BCE.")
    confidence_margin: float = Field(0.3, ge=0, le=0.5, description="Clear targets push |p - 0.5| past this.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of unique prompts held out for validation.")
    decision_threshold: float = Field(0.5, gt=0, lt=1, description="Probability above which a domain counts as "
                                                                   "on for F1 and the mixed set match.")
    checkpoint_score: Literal["paper", "auroc_f1"] = Field(
        "paper", description="Which epoch's router is kept: paper (3.6: 0.50 x single-domain top-1 accuracy + "
                             "0.35 x mixed set exact match - 0.15 x val BCE, against the oracle's sets) or auroc_f1 "
                             "(mean AUROC + mean F1 - val BCE: rank-based, smoother on few validation prompts).")
    cross_domain_pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="Oracle: domain pairs whose router prompts are joined into cross-domain "
                                          "prompts (paper 5.4, router v2: chat+reasoning, reasoning+math, "
                                          "reasoning+code, reasoning+medical); a pair with an untrained domain is "
                                          "skipped.")
    cross_domain_rows: int = Field(50, ge=1, description="Cross-domain prompts built per pair (each from one "
                                                         "router row of each domain, drawn by seed).")
    seed: int = Field(0, description="Seed of the split, the router's initialisation and its batches.")
    soft_boost: dict[str, float] = Field(default_factory=lambda: {"reasoning": 0.5},
                                         description="Oracle: domain -> target weight given when adding the domain "
                                                     "lowers the loss at all (paper: reasoning 0.5), instead of 1.")
    oracle_batch_size: int = Field(16, ge=1, description="Oracle: (prompt, combination) rows per forward pass.")
    oracle_flush_forwards: int = Field(8, ge=1, description="Oracle: computed losses are written to the catalog "
                                                            "after at most this many forwards (K), so a worker "
                                                            "killed mid-oracle loses at most K forwards of work.")
    oracle_shards: int = Field(1, ge=0, description="Oracle fan-out: shards of the router and test prompts run as "
                                                    "tasks on a Dask cluster (prefect-dask), each loading the base "
                                                    "once; 1: no fan-out (in the routing task); 0: one per worker "
                                                    "of the cluster.")
    dask_address: str | None = Field(None, description="Oracle and evaluation fan-out: the Dask scheduler "
                                                       "(tcp://host:8786) whose workers run the shards "
                                                       "($BRAINSTACKS_DASK_ADDRESS wins); None: a local cluster "
                                                       "of one worker process per shard.")
    exhaustive_sample: int = Field(20, ge=0, description="Oracle: prompts also searched exhaustively over all "
                                                         "2^D combinations, to report the greedy search's regret.")
    prefix_seeds: bool = Field(True, description="Oracle: also try every curriculum prefix (chat, chat+code, ...) as "
                                                 "the first step: a later domain's stacks were trained on top of "
                                                 "the earlier ones and may help only together with them.")


class RoutingSetup(BaseModel):
    """The sections the routing stage of a run reads (built by ``Profile.routing_setup``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: TrainingSetup = Field(..., description="The trained run: store, base, stacks, curriculum.")
    router: RouterConfig = Field(..., description="Oracle, meta-router, inference gates.")
