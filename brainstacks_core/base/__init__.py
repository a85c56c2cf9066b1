"""Base models: the tiny CPU Llama, hub / 4-bit loading, the single-LoRA baseline.

What belongs here: building and pretraining the tiny base on its own pinned corpus
(``tiny_base``), loading a hub model at a pinned revision, optionally 4-bit NF4
(``loading``), and the parameter-matched PEFT LoRA baseline (``baseline``).

What it may import: torch, transformers, bitsandbytes, peft, ``stacks``,
``lineage`` (versions, fingerprints) and ``files``; never ``data`` or ``training``.
"""
