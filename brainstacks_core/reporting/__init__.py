"""Reporting: plots (PNG) and the markdown report of a profile.

What may import it: ``routing`` (its plots, ``routing_plots``), ``evaluation`` and
orchestration (``tasks``, ``flows``). It may import ``training``, ``lineage`` and
``files`` (``tests/test_layout.py``: LAYERS).
"""
