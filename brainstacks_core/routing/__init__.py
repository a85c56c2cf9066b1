"""Routing: oracle discovery, the meta-router and routed / superposition inference (paper 3.6).

What belongs here: the ``router:`` profile section (``config``), oracle targets per
prompt cached in the catalog, the meta-router on base-only hidden states, and
inference that loads only the stacks a prompt is routed to.

What it may import: ``stacks``, ``base``, ``training`` (loss evaluation, data
rows), ``lineage`` and ``files``; never Prefect.
"""
