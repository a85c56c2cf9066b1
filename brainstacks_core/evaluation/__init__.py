"""Benchmark evaluation on lm-evaluation-harness: base, ungated and routed modes.

What belongs here: the ``eval:`` profile section (``config``), the harness model
class over the profile's model, offline task definitions, paired comparisons and
per-item results in the catalog.

What it may import: ``stacks``, ``base``, ``routing``, ``training`` (loss helpers),
``lineage`` and ``files``; never Prefect.
"""
