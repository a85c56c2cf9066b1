"""The MoE-LoRA stack primitive (paper sections 3.1, 3.2, 3.5).

What belongs here: the MoE-LoRA delta (``moe_lora``), the stacked layer that holds a
base projection plus frozen stacks and one active stack (``stacked_layer``),
injection into Hugging Face causal LMs (``inject``), one-stack-per-file
safetensors IO (``stack_io``) and null-space bases (``null_space``).

What it may import: torch, safetensors, pydantic and ``brainstacks_core.files``.
It stands alone: nothing from ``data``, ``training``, ``lineage``, ``routing`` or
``reporting`` (``tests/test_layout.py`` enforces this). Callers pass lineage in
as plain metadata.
"""
