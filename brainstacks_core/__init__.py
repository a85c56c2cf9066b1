"""brainstacks_core: the Brainstacks library (torch/transformers/datasets/duckdb; never Prefect).

One subpackage per concept; each ``__init__`` says what belongs there and what it
may import (``tests/test_layout.py`` checks the boundaries):

- ``stacks``: the MoE-LoRA primitive (delta, stacked layer, injection, stack files, null space);
- ``base``: tiny base, hub / 4-bit loading, the single-LoRA baseline;
- ``data``: sources, formats, chat-token stripping, decontamination, the pipeline (no torch);
- ``training``: SFT, BestStackCallback, boosting, the continual loop, Experiment 1;
- ``routing``: oracle, meta-router, routed inference;  ``evaluation``: lm-eval scoring;
- ``lineage``: the DuckDB catalog and versions;  ``reporting``: plots and the report;
- ``profile``: the typed profile (one pydantic model per section);  ``files``: atomic IO.

The public names below are importable from the package root; heavy ones load lazily,
so ``import brainstacks_core`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MoELoRAConfig": "brainstacks_core.stacks.config",
    "NullSpaceConfig": "brainstacks_core.stacks.config",
    "MoELoRADelta": "brainstacks_core.stacks.moe_lora",
    "StackedMoELoRALayer": "brainstacks_core.stacks.stacked_layer",
    "inject_stacks": "brainstacks_core.stacks.inject",
    "save_stack": "brainstacks_core.stacks.stack_io",
    "load_stack": "brainstacks_core.stacks.stack_io",
    "strip_chat_tokens": "brainstacks_core.data.text_cleaning",
    "prepare_all": "brainstacks_core.data.pipeline",
    "BestStackCallback": "brainstacks_core.training.best_stack",
    "TrainingConfig": "brainstacks_core.training.config",
    "train_profile": "brainstacks_core.training.run",
    "load_base": "brainstacks_core.base.loading",
    "build_tiny_base": "brainstacks_core.base.tiny_base",
    "Catalog": "brainstacks_core.lineage.catalog",
    "Profile": "brainstacks_core.profile",
    "ProfileError": "brainstacks_core.profile",
    "load_profile": "brainstacks_core.profile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'brainstacks_core' has no attribute {name!r}")
