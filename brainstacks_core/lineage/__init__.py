"""Lineage: the DuckDB catalog, content versions and their OpenLineage export.

What belongs here: the catalog of artifacts, edges, row membership, metrics and
events (``catalog``), content/code/config versions (``versioning``), the store
context every stage receives (``context``: profile name, store, catalog, seed), the
``lineage:`` profile section (``config``) and OpenLineage run events built from the
catalog (``openlineage``; the locked JSONL file and reading it back: ``openlineage_io``).

What it may import: duckdb, pandas, pydantic, openlineage-python and ``files``;
nothing else of the core, so every other subpackage (except ``stacks``, which
stands alone) may record lineage.
"""
