"""Lineage: the DuckDB catalog and content versions.

What belongs here: the catalog of artifacts, edges, row membership, metrics and
events (``catalog``) and content/code/config versions (``versioning``).

What it may import: duckdb, pandas and ``files``; nothing else of the core, so
every other subpackage (except ``stacks``, which stands alone) may record lineage.
"""
