"""Code versions: data versions hash exactly the modules that decide a dataset's content."""

from __future__ import annotations

import ast
from pathlib import Path

from brainstacks_core.lineage import versioning

ROOT = Path(__file__).resolve().parents[1]
# imported by the data path but cannot change what a dataset contains
CONTENT_NEUTRAL = {"brainstacks_core/files.py", "brainstacks_core/profile.py", "brainstacks_core/lineage/catalog.py",
                   "brainstacks_core/lineage/cache_tables.py",  # the catalog's eval/oracle cache tables
                   # where the catalog's tables live (DuckDB file / PostgreSQL), not what a dataset holds
                   "brainstacks_core/lineage/backends.py", "brainstacks_core/lineage/pg_backend.py",
                   # where the files live (a local folder / an object store), verified by sha256 on every read
                   "brainstacks_core/lineage/blob_store.py", "brainstacks_core/lineage/publisher.py",
                   "brainstacks_core/lineage/storage_config.py", "brainstacks_core/lineage/store_sync.py",
                   "brainstacks_core/__init__.py", "brainstacks_core/lineage/__init__.py",
                   # other stages' sections, imported by profile.py; the data section is hashed as step config
                   *(f"brainstacks_core/{pkg}/config.py" for pkg in ("base", "stacks", "training", "routing",
                                                                       "evaluation", "lineage")),
                   "brainstacks_core/orchestration.py"}


def _core_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                "brainstacks_core", "data_contracts"):
            rel = node.module.replace(".", "/")
            out.add(f"{rel}.py" if (ROOT / f"{rel}.py").exists() else f"{rel}/__init__.py")
            out.update(f"{rel}/{a.name}.py" for a in node.names if (ROOT / rel / f"{a.name}.py").exists())
    return out


def test_data_modules_cover_every_import_of_the_data_path():
    assert all((ROOT / m).exists() for m in versioning.DATA_MODULES)
    listed = {str(p.relative_to(ROOT)) for p in versioning._expand(versioning.DATA_MODULES)}
    todo, seen = ["brainstacks_core/data/pipeline.py"], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(_core_imports(ROOT / mod))
    missing = {m for m in seen if not m.startswith("data_contracts/")} - listed - CONTENT_NEUTRAL
    assert not missing, f"data-path modules not hashed into data versions: {sorted(missing)}"


def test_data_code_version_ignores_training_code_but_tracks_data_code():
    files = versioning._expand(versioning.DATA_MODULES)
    assert ROOT / "brainstacks_core" / "data" / "text_cleaning.py" in files
    assert ROOT / "brainstacks_core" / "stacks" / "moe_lora.py" not in files
    assert ROOT / "brainstacks_core" / "reporting" / "plots.py" not in files
    assert versioning.data_code_version() != versioning.code_version()
