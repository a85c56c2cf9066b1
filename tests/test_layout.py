"""Import boundaries of the core, checked on the source (static) and in a fresh interpreter.

The module graph (every import of brainstacks_core/, data_contracts/, tasks/ and flows/, function-level
imports included) has no circle, and every import points down the layers of ``LAYERS``.
"""

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


# Lowest first. A unit may import units of a lower rank (and itself), never a higher or an equal one:
# stage sections are composed by ``profile`` from the top; tasks call the core; flows sequence tasks.
LAYERS = {
    "brainstacks_core.files": 0, "brainstacks_core.orchestration": 0,
    "brainstacks_core.lineage": 1, "brainstacks_core.stacks": 1,
    "brainstacks_core.data": 2, "data_contracts": 2, "brainstacks_core.base": 2,
    "brainstacks_core.training": 3, "brainstacks_core.reporting": 4, "brainstacks_core.routing": 5,
    "brainstacks_core.evaluation": 6, "brainstacks_core.profile": 7, "brainstacks_core.store_migration": 7,
    "brainstacks_core": 8,
    "tasks": 9, "flows": 10,
}
# The contracts guard the data steps and reuse text_cleaning's chat-token check (module graph stays acyclic).
PEERS = {("brainstacks_core.data", "data_contracts"), ("data_contracts", "brainstacks_core.data")}
GRAPH_FOLDERS = ("brainstacks_core", "data_contracts", "tasks", "flows")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: {project modules it imports}}`` over GRAPH_FOLDERS (``from pkg import name`` resolves
    to the submodule ``pkg.name`` when there is one, else to ``pkg``)."""
    files = {_module_name(f, root): f for folder in GRAPH_FOLDERS for f in sorted((root / folder).rglob("*.py"))}
    graph = {}
    for name, f in files.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1])
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module
                subs = {f"{mod}.{a.name}" for a in node.names} & files.keys()
                found.update(subs or {mod})
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "brainstacks_core":
        return parts[0]
    return ".".join(parts[:2])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a unit to one of an equal or higher rank (``LAYERS``), as ``a -> b`` lines."""
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            ua, ub = _unit(a), _unit(b)
            if ua == ub or (ua, ub) in PEERS:
                continue
            if ua not in LAYERS or ub not in LAYERS:
                bad.append(f"{a} -> {b} (unit without a layer: add it to LAYERS)")
            elif LAYERS[ub] >= LAYERS[ua]:
                bad.append(f"{a} -> {b} ({ua} rank {LAYERS[ua]} imports {ub} rank {LAYERS[ub]})")
    return bad


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert "brainstacks_core.routing.oracle" in graph and "flows.pipeline" in graph  # the walk found the code
    assert not circles(graph), circles(graph)


def test_every_import_points_down_the_layers():
    assert not upward_imports(import_graph()), "\n".join(upward_imports(import_graph()))


def test_no_stage_module_imports_the_profile():
    graph = import_graph()
    bad = sorted(m for m, t in graph.items() if m.count(".") >= 2 and m.startswith("brainstacks_core.")
                 and "brainstacks_core.profile" in t)
    assert not bad, f"stage modules take their typed sections; profile.py composes them from the top: {bad}"


def test_the_graph_checks_catch_a_circle_and_an_upward_import(tmp_path):
    """The checks themselves, on a planted tree: a circle a <-> b and lineage importing training."""
    core = tmp_path / "brainstacks_core"
    for folder, files in {"lineage": {"a.py": "from brainstacks_core.lineage import b\n",
                                      "b.py": "from brainstacks_core.lineage.a import x\n"
                                              "def f():\n    import brainstacks_core.training.t\n"},
                          "training": {"t.py": ""}}.items():
        (core / folder).mkdir(parents=True)
        for name, text in files.items():
            (core / folder / name).write_text(text)
    for folder in GRAPH_FOLDERS[1:]:
        (tmp_path / folder).mkdir()
    graph = import_graph(tmp_path)
    assert circles(graph) == [["brainstacks_core.lineage.a", "brainstacks_core.lineage.b"]]
    assert upward_imports(graph) == ["brainstacks_core.lineage.b -> brainstacks_core.training.t "
                                     "(brainstacks_core.lineage rank 1 imports brainstacks_core.training rank 3)"]


def test_flows_take_the_profile_path_and_tasks_take_the_loaded_profile():
    """The UI form of every flow still offers config_path as a choice of profiles; no task re-reads a
    path: each takes the Profile its flow loaded (pydantic, never hashed: NO_CACHE)."""
    import importlib
    import inspect

    from prefect import Flow, Task
    from prefect.cache_policies import NO_CACHE
    from prefect.utilities.callables import parameter_schema

    from brainstacks_core.profile import Profile
    from flows.params import PROFILES

    flows, tasks = [], []
    for f in _files(ROOT / "flows") + _files(ROOT / "tasks"):
        mod = importlib.import_module(_module_name(f, ROOT))
        for obj in vars(mod).values():
            if isinstance(obj, Flow) and obj.fn.__module__ == mod.__name__:
                flows.append(obj)
            elif isinstance(obj, Task) and obj.fn.__module__ == mod.__name__:
                tasks.append(obj)
    assert len(flows) >= 7 and len(tasks) >= 12, (flows, tasks)
    for fl in flows:
        props = parameter_schema(fl).model_dump()["properties"]
        assert props["config_path"]["enum"] == PROFILES, fl.name
    for t in tasks:
        params = inspect.signature(t.fn).parameters
        assert "config_path" not in params and "artifact_root" not in params, t.name
        assert params["profile"].annotation in (Profile, "Profile"), t.name
        assert t.cache_policy is NO_CACHE, t.name
