"""Training configuration: the ``training:`` section of a profile.

Example (``configs/demo.yaml``)::

    training:
      max_rounds: 2          # boosting rounds per domain (paper: 2-3)
      min_loss_delta: 0.002  # stop adding rounds when the gain is smaller
      spike_threshold: 0.1   # BestStackCallback
      patience: 4
      null_space: true       # false for the ablation
      null_space_k: 8
      sft: {max_steps: 60, learning_rate: 0.003, batch_size: 8, eval_steps: 10}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from brainstacks_core.null_space import NullSpaceConfig
from brainstacks_core.sft import SFTSettings


@dataclass(frozen=True)
class TrainingConfig:
    """Attributes:
        domains: curriculum order; None = the data section's domain order.
        max_rounds: boosting rounds per domain.
        min_loss_delta: a round gaining less than this ends the domain.
        spike_threshold: BestStackCallback spike threshold.
        patience: BestStackCallback patience (evaluations).
        null_space: project new stacks out of earlier domains' directions.
        null_space_cfg: K, sample count and SVD settings.
        null_space_val_rows: validation rows per previous domain used for the bases.
        eval_rows: validation rows used for round decisions and the forgetting
            matrix (None = all).
        sft: trainer settings of each round.
        seed: seed of stack initialisation.
        ablation: the pipeline also trains a run without null space (run "no-null-space")
            for the forgetting comparison.
    """

    domains: tuple[str, ...] | None = None
    max_rounds: int = 2
    min_loss_delta: float = 0.002
    spike_threshold: float = 0.1
    patience: int = 4
    null_space: bool = True
    null_space_cfg: NullSpaceConfig = field(default_factory=NullSpaceConfig)
    null_space_val_rows: int = 256
    eval_rows: int | None = 256
    sft: SFTSettings = field(default_factory=SFTSettings)
    seed: int = 0
    ablation: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainingConfig":
        """Parse the YAML section; ``null_space_k``/``null_space_max_rows`` are shorthands."""
        d = dict(d)
        ns = dict(d.pop("null_space_cfg", {}) or {})
        for short, key in (("null_space_k", "k"), ("null_space_max_rows", "max_rows")):
            if short in d:
                ns[key] = d.pop(short)
        sft = dict(d.pop("sft", {}) or {})
        allowed = {f.name for f in dataclasses.fields(cls)} - {"null_space_cfg", "sft"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"unknown training keys {unknown}; allowed: {sorted(allowed)}")
        for name, sub_cls, sub in (("null_space_cfg", NullSpaceConfig, ns), ("sft", SFTSettings, sft)):
            bad = sorted(set(sub) - {f.name for f in dataclasses.fields(sub_cls)})
            if bad:
                raise ValueError(f"unknown training.{name} keys {bad}")
        if d.get("domains") is not None:
            d["domains"] = tuple(d["domains"])
        return cls(**d, null_space_cfg=NullSpaceConfig(**ns), sft=SFTSettings(**sft))
