"""Import boundaries of the core, checked on the source (static) and in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "brainstacks_core"


def _imports(path: Path) -> set[str]:
    """Every module name a file imports (absolute names; relative imports resolved)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[: -node.level])
                out.add(f"{pkg}.{node.module}")
            else:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("folder", ["brainstacks_core", "data_contracts"])
def test_core_and_contracts_never_import_prefect(folder):
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f) if m.split(".")[0] == "prefect")
           for f in _files(ROOT / folder)}
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize("package,forbidden", [
    ("stacks", ("data", "training", "lineage", "reporting", "routing", "evaluation", "base")),
    ("data", ("stacks", "training", "base", "reporting", "routing", "evaluation")),
    ("lineage", ("stacks", "data", "training", "base", "reporting", "routing", "evaluation")),
    ("base", ("data", "training", "reporting", "routing", "evaluation")),
])
def test_subpackage_boundaries(package, forbidden):
    prefixes = tuple(f"brainstacks_core.{f}" for f in forbidden)
    bad = {}
    for f in _files(CORE / package):
        hits = sorted(m for m in _imports(f) if m.startswith(prefixes))
        if hits:
            bad[str(f.relative_to(ROOT))] = hits
    assert not bad, f"brainstacks_core/{package} may not import {forbidden}: {bad}"


def test_data_path_never_imports_torch():
    bad = {str(f.relative_to(ROOT)): sorted(m for m in _imports(f) if m.split(".")[0] in ("torch", "transformers"))
           for f in _files(CORE / "data") + _files(ROOT / "data_contracts") + _files(CORE / "lineage")}
    assert not {k: v for k, v in bad.items() if v}
    # and at run time: preparing data loads no torch, not even transitively
    code = ("import sys, brainstacks_core.data.pipeline, brainstacks_core.profile; "
            "print('torch' in sys.modules, 'prefect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_public_names_importable_from_the_package_root():
    import brainstacks_core

    for name in brainstacks_core.__all__:
        assert getattr(brainstacks_core, name) is not None, name


def test_every_subpackage_says_what_belongs_there():
    for init in CORE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{init}: docstring must say what belongs there and what it may import"
