"""The data path: sources -> normalise -> strip chat tokens -> decontaminate -> split.

What belongs here: file readers, sources and format adapters (``readers``, ``sources``, ``formats``),
chat-token stripping (``text_cleaning``), keyword and benchmark decontamination
(``decontamination``, ``benchmark_decontamination``), the per-step functions and
the versioned pipeline (``steps``, ``pipeline``), the ``data:`` profile section
(``config``) and the offline generators of the demo profile (``generators``).

What it may import: pandas, pyarrow, datasets, ``data_contracts``, ``lineage`` and
``files``. No torch (``tests/test_layout.py`` enforces this), so preparing data
never pays for a deep-learning import.
"""
