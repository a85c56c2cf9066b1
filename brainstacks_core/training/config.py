"""Typed ``training:`` and ``experiment1:`` profile sections, and :class:`TrainingSetup`.

``TrainingSetup`` is what a whole training run needs from a profile (the store
context, the base, MoE, training and orchestration sections, the curriculum);
``Profile.training_setup`` builds it, so nothing in ``training`` imports the profile.

Pure pydantic (no torch, no trl), so a profile validates in milliseconds.

Example (``configs/demo.yaml``)::

    training:
      max_rounds: 2          # boosting rounds per domain (paper: 2-3)
      min_loss_delta: 0.002  # stop adding rounds when the gain is smaller
      null_space: true       # false for the ablation
      null_space_val_rows: 40
      basis: {k: 8, max_rows: 2048}
      sft: {max_steps: 50, learning_rate: 0.003, batch_size: 8, eval_steps: 10}
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from brainstacks_core.base.config import BaseConfig
from brainstacks_core.data.config import PreferenceSourceConfig
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.orchestration import OrchestrationConfig
from brainstacks_core.stacks.config import MoELoRAConfig, NullSpaceConfig


class SFTSettings(BaseModel):
    """Trainer hyperparameters of one boosting round (trl ``SFTConfig`` is built from these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(100, ge=1, description="Optimizer steps per round.")
    learning_rate: float = Field(2e-4, ge=0, description="Peak learning rate (0 freezes the round: a test of the keep rule).")
    batch_size: int = Field(8, ge=1, description="Per-device batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    eval_steps: int = Field(20, ge=1, description="Evaluate (and run BestStackCallback) every this many steps.")
    max_length: int = Field(256, ge=8, description="Truncation length in tokens, training and evaluation alike.")
    seed: int = Field(0, description="Trainer seed.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (cosine, linear, constant, ...).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (GPU profiles).")
    packing: bool = Field(False, description="Pack training rows into max_length blocks (trl SFTConfig packing; "
                                             "the paper packs, 4.1). Only the training batches are packed: every "
                                             "decision (start, evaluations, keep) stays on the answer-only, "
                                             "unpacked validation loss.")
    packing_strategy: Literal["wrapped", "bfd"] = Field(
        "wrapped", description="trl packing strategy: wrapped (rows concatenated and cut at max_length, the "
                               "paper-era ConstantLengthDataset; any attention) or bfd (best-fit decreasing, "
                               "padding-free: needs FlashAttention, else rows attend across boundaries).")


class DomainOverride(BaseModel):
    """Per-domain settings that replace the run's own (paper 3.3: rounds "configurable per domain"; 4.3: 600
    steps for reasoning). Unset fields keep the run's values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int | None = Field(None, ge=1, description="Optimizer steps per round of this domain.")
    max_rounds: int | None = Field(None, ge=1, description="Boosting rounds of this domain.")
    learning_rate: float | None = Field(None, ge=0, description="Peak learning rate of this domain's rounds.")


class _RLCommon(BaseModel):
    """Settings every per-domain RL method shares (paper 6.2: RL on the domain's last, active stack)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(8, ge=1, description="Optimizer steps of the RL stage.")
    learning_rate: float = Field(5e-4, ge=0, description="Peak learning rate of the RL stack.")
    batch_size: int = Field(4, ge=1, description="DPO: pairs per step; GRPO: prompts per step (each sampled "
                                                 "num_generations times).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    eval_steps: int = Field(1, ge=1, description="Guard evaluation every this many steps (1: BestStackCallback "
                                                 "checks every RL step).")
    spike_threshold: float | None = Field(None, gt=0, description="Guard: a held-out guard loss this far above "
                                          "the best restores the best weights and stops (None: "
                                          "training.spike_threshold).")
    max_train_loss: float = Field(1e4, gt=0, description="Guard: a logged training loss above this (or not "
                                                          "finite) stops and restores the best weights (the "
                                                          "paper's GRPO loss spiked to ~28 million).")
    eval_rows: int = Field(16, ge=1, description="Held-out rows of the guard and the before/after table.")
    max_length: int = Field(192, ge=8, description="Truncation length in tokens (prompt + completion).")
    seed: int = Field(0, description="Trainer seed.")


class DPOSettings(_RLCommon):
    """DPO with chosen/rejected pairs (trl ``DPOTrainer``); the reference is the model after SFT."""

    method: Literal["dpo"] = Field("dpo", description="Direct Preference Optimization.")
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference.")
    loss_type: str = Field("sigmoid", description="trl DPO loss type (sigmoid, ipo, hinge, ...).")
    preferences: list[PreferenceSourceConfig] = Field(default_factory=lambda: [
        PreferenceSourceConfig(kind="generated", generator="chat_pairs")],
        description="Preference sources (prompt/chosen/rejected); default: generated chat pairs.")


class GRPOSettings(_RLCommon):
    """GRPO with verifiable rewards on the domain's own train prompts (trl ``GRPOTrainer``)."""

    method: Literal["grpo"] = Field("grpo", description="Group Relative Policy Optimization.")
    reward: Literal["math", "code", "medical"] | None = Field(None, description="Reward: math (exact answer + "
                                                               "format), code (the program against its asserts "
                                                               "in a sandbox), medical (keyword rubric); None: the "
                                                               "domain's name.")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(32, ge=1, description="Longest sampled completion in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the group's completions.")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the reference (trl's default 0: none).")
    prompts: int = Field(64, ge=1, description="Train prompts of the domain used for GRPO.")
    sandbox_timeout_s: float = Field(5.0, gt=0, description="Code reward: wall-clock limit per program run.")


RLSettings = Annotated[Union[DPOSettings, GRPOSettings], Field(discriminator="method")]


class TrainingConfig(BaseModel):
    """Continual training: the outer loop over domains and the inner boosting loop (paper 3.3-3.5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: tuple[str, ...] | None = Field(None, description="Curriculum order; None = the data section's order. "
                                                              "Every name must be a data domain.")
    max_rounds: int = Field(2, ge=1, description="Boosting rounds per domain (paper: 2-3).")
    min_loss_delta: float = Field(0.002, ge=0, description="A round gaining less than this ends the domain.")
    keep_rule: Literal["improving", "paper"] = Field(
        "improving", description="Which rounds are frozen: improving (a round whose validation loss did not "
                                 "drop below its starting loss is discarded, never written) or paper (Algorithm "
                                 "1: every round is frozen, and the domain stops when its gain < min_loss_delta).")
    per_domain: dict[str, DomainOverride] = Field(
        default_factory=dict, description="Domain -> {max_steps, max_rounds, learning_rate} replacing the run's "
                                          "values for that domain only (each name must be a data domain).")
    spike_threshold: float = Field(0.1, gt=0, description="BestStackCallback: a validation loss this far above "
                                                          "the best restores the best snapshot.")
    patience: int = Field(4, ge=1, description="BestStackCallback: evaluations without improvement before a stop.")
    null_space: bool = Field(True, description="Project new stacks out of earlier domains' directions (paper 3.5).")
    basis: NullSpaceConfig = Field(default_factory=NullSpaceConfig, description="Null-space basis settings: K, "
                                                                               "sample rows, SVD.")
    null_space_val_rows: int = Field(256, ge=1, description="Validation samples for the null-space bases: per "
                                                            "earlier domain (basis.combine: per_domain) or in total, "
                                                            "split evenly over the earlier domains (joint; the "
                                                            "paper's nsamples: 200 on TinyLlama, 400 on Gemma).")
    eval_rows: int | None = Field(256, ge=1, description="Validation rows for round decisions and the forgetting "
                                                         "matrix (None = all).")
    sft: SFTSettings = Field(default_factory=SFTSettings, description="Trainer settings of each round.")
    seed: int = Field(0, description="Seed of stack initialisation.")
    ablation: bool = Field(True, description="The pipeline also trains a run without null space "
                                             "(run `no-null-space`) for the forgetting comparison.")
    rl: dict[str, RLSettings] = Field(default_factory=dict, description="Optional per-domain RL on a fresh active "
                                      "stack after the SFT rounds, frozen after RL (paper 6.2), e.g. {chat: dpo, "
                                      "math: grpo}; a method name or {method: ..., settings}.")

    @field_validator("rl", mode="before")
    @classmethod
    def _rl_shorthand(cls, value):
        if isinstance(value, dict):
            return {d: {"method": v} if isinstance(v, str) else v for d, v in value.items()}
        return value

    def for_domain(self, domain: str) -> "TrainingConfig":
        """This config with ``per_domain[domain]`` applied (itself when the domain has no override)."""
        o = self.per_domain.get(domain)
        if o is None:
            return self
        sft = {k: v for k, v in (("max_steps", o.max_steps), ("learning_rate", o.learning_rate)) if v is not None}
        top = {"max_rounds": o.max_rounds} if o.max_rounds is not None else {}
        return self.model_copy(update={**top, "sft": self.sft.model_copy(update=sft)})


class Experiment1Config(BaseModel):
    """Experiment 1 (paper 4.1): MoE-LoRA vs a parameter-matched single LoRA on one domain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Run Experiment 1 in the pipeline.")
    domain: str = Field("chat", description="The domain both arms train on (a data domain).")
    lora_rank: int = Field(64, ge=1, description="Rank of the single LoRA (64 matches 4 experts x r16).")


class TrainingSetup(BaseModel):
    """The sections a whole training run reads (built by ``Profile.training_setup``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: StoreContext = Field(..., description="Profile name, store, catalog, seed, repository root.")
    base: BaseConfig = Field(..., description="The base model stacks are trained on.")
    moe: MoELoRAConfig = Field(..., description="The MoE-LoRA stack shape.")
    training: TrainingConfig = Field(..., description="Continual training.")
    orchestration: OrchestrationConfig = Field(..., description="Run locks (on_busy, lock timeout).")
    curriculum: tuple[str, ...] = Field(..., min_length=1, description="Domains in training order.")
    experiment1: Experiment1Config | None = Field(None, description="Experiment 1; None: skipped.")
