"""brainstacks_core: the Brainstacks library (torch/transformers/datasets/duckdb; no Prefect).

Heavy names are imported lazily so ``import brainstacks_core`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MoELoRAConfig": "brainstacks_core.moe_lora",
    "MoELoRADelta": "brainstacks_core.moe_lora",
    "StackedMoELoRALayer": "brainstacks_core.stacked_layer",
    "inject_stacks": "brainstacks_core.inject",
    "strip_chat_tokens": "brainstacks_core.text_cleaning",
    "BestStackCallback": "brainstacks_core.best_stack",
    "load_profile": "brainstacks_core.profile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'brainstacks_core' has no attribute {name!r}")
