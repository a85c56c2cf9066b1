"""Dataset versions, splits and failed prepares (issue 9 items 4 and 9), on small real pipelines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from brainstacks_core.data.config import DataConfig
from brainstacks_core.data.pipeline import EmptyDomainError, check_conservation, prepare_all
from brainstacks_core.data.steps import SPLITS, assign_splits
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile

LEX = {"chat": ["letter", "poem"], "code": ["python", "def", "return"], "math": ["how many", "total"]}


def _data(profile):
    """The data stage's arguments of a profile: its store context and ``data:`` section."""
    return profile.context, profile.data


def _write(tmp_path: Path, sources: dict, **data) -> Path:
    cfg = tmp_path / "configs" / "t.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    body = {"domains": list(sources), "sources": sources, "lexicons": LEX, "margin": 2, "min_score": 2, **data}
    cfg.write_text(yaml.safe_dump({"name": "t", "artifact_root": "artifacts", "seed": 0, "data": body}))
    return cfg


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path.relative_to(path.parents[1]))


def _three_domains(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    files = {
        "chat": [{"instruction": f"Write a short poem about day {i}", "output": f"Day {i}, a letter to you."}
                 for i in range(40)],
        "code": [{"instruction": f"Write python def f{i}", "output": f"def f{i}():\n    return {i}"} for i in range(40)],
        "math": [{"instruction": f"How many apples are {i} and {i}?", "output": f"total {2 * i}"} for i in range(40)],
    }
    sources = {k: [{"kind": "local", "format": "alpaca", "path": _jsonl(d / f"{k}.jsonl", v), "mixed": k == "chat"}]
               for k, v in files.items()}
    return _write(tmp_path, sources)


def test_one_byte_edit_re_versions_only_its_domain(tmp_path):
    cfg = _three_domains(tmp_path)
    first = prepare_all(*_data(load_profile(cfg)))
    assert all(p.new_version for p in first.values())
    code = tmp_path / "data" / "code.jsonl"
    code.write_text(code.read_text().replace("return 7", "return 8", 1))
    second = prepare_all(*_data(load_profile(cfg)))
    changed = {d for d in first if first[d].version != second[d].version}
    assert changed == {"code"}
    assert {d for d, p in second.items() if p.new_version} == {"code"}  # one version-changed event, not three


def test_generated_source_switched_to_local_file_with_the_same_rows(tmp_path):
    gen = {"math": [{"kind": "generated", "generator": "math", "rows": 60}]}
    cfg = _write(tmp_path, gen)
    profile = load_profile(cfg)
    prepare_all(profile.context, profile.data)
    made = next((profile.store / "generated").rglob("*.jsonl"))
    shutil.copy(made, tmp_path / "math_copy.jsonl")
    cfg = _write(tmp_path, {"math": [{"kind": "local", "format": "prompt_response", "path": "math_copy.jsonl"}]})
    res = prepare_all(*_data(load_profile(cfg)))  # used to fail: version ... already recorded for generated://...
    cat = Catalog(profile.catalog_path)
    assert {a["uri"] for a in cat.list_artifacts("source")} == {"generated://math?rows=60&seed=0",
                                                                  "local:math_copy.jsonl"}
    assert res["math"].new_version


def test_a_failed_prepare_registers_nothing(tmp_path):
    cfg = _three_domains(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    bad = tmp_path / "data" / "zmed.jsonl"
    _jsonl(bad, [{"instruction": f"q{i}"} for i in range(5)])  # every row lacks `output`
    raw["data"]["domains"].append("medical")
    raw["data"]["sources"]["medical"] = [{"kind": "local", "format": "alpaca", "path": "data/zmed.jsonl"}]
    cfg.write_text(yaml.safe_dump(raw))
    profile = load_profile(cfg)
    with pytest.raises(EmptyDomainError, match=r"medical.*0 rows left.*quarantine.*field 'output'"):
        prepare_all(profile.context, profile.data)
    assert Catalog(profile.catalog_path).list_artifacts() == []  # chat, code, math were finished, not registered
    assert not (profile.store / "datasets" / "medical").exists()


def test_splits_are_disjoint_deterministic_and_registered(tmp_path):
    cfg = _three_domains(tmp_path)
    profile = load_profile(cfg)
    res = prepare_all(profile.context, profile.data)["code"]
    check_conservation(res.counts, "code")
    parts = {s: pd.read_parquet(res.split_path(s)) for s in SPLITS}
    ids = [set(p["record_id"]) for p in parts.values()]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 40  # never overlapping, nothing lost
    assert all(len(parts[s]) > 0 for s in SPLITS)
    cat = Catalog(profile.catalog_path)
    for s in SPLITS:
        art = cat.get(res.uri_version(s))
        assert art["uri"] == f"dataset://t/code/{s}" and len(cat.members(res.uri_version(s))) == len(parts[s])
    assert res.test_uri_version.endswith("-test") and res.router_uri_version.endswith("-router")
    again = prepare_all(*_data(load_profile(cfg)))["code"]
    assert again.version == res.version and again.cache_hit


def test_a_records_split_depends_only_on_its_id_and_the_seed():
    cfg = DataConfig(domains=["x"], sources={"x": [{"kind": "generated", "generator": "math"}]})
    ids = pd.Series([f"{i:016x}" for i in range(20_000)])
    full = assign_splits(ids, cfg)
    assert assign_splits(ids.iloc[::7], cfg) == full[::7]  # other rows do not move a record
    shares = pd.Series(full).value_counts(normalize=True)
    for s, f in (("val", cfg.val_fraction), ("test", cfg.test_fraction), ("router", cfg.router_fraction)):
        assert abs(shares[s] - f) < 0.01
    with pytest.raises(ValueError, match="under 10%"):
        DataConfig(domains=["x"], sources={"x": [{"kind": "generated", "generator": "math"}]}, val_fraction=0.4,
                   test_fraction=0.3, router_fraction=0.3)
