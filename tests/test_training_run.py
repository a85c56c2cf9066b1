"""Profile-level training: prepared data -> tiny base -> stacks, with lineage answered by the catalog."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile
from brainstacks_core.stacks.stack_io import load_stack
from brainstacks_core.training.run import train_profile

ROOT = Path(__file__).resolve().parents[1]


def _mini_profile(tmp_path: Path, **training) -> Path:
    """The demo profile cut down to two tiny domains, one round; ``training`` overrides ``training:`` keys."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["name"] = "mini"
    raw["data"]["domains"] = ["chat", "math"]
    raw["data"]["sources"] = {"chat": [{"kind": "generated", "generator": "chat", "rows": 90}],
                              "math": [{"kind": "generated", "generator": "math", "rows": 120}]}
    raw["data"]["max_rows_per_domain"] = 120
    raw["base"]["tiny"].update(vocab_size=512, hidden_size=32, intermediate_size=64, pretrain_steps=5,
                               pretrain_batch_size=4, seq_len=64)
    raw["moe"].update(rank=4)
    raw["training"].update(max_rounds=1, basis={"k": 4}, eval_rows=16, null_space_val_rows=16,
                           sft={"max_steps": 6, "eval_steps": 3, "batch_size": 8, "learning_rate": 0.003,
                                "warmup_steps": 0, "max_length": 96})
    raw["training"].update(training)
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    path = cfg_dir / "mini.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_train_profile_records_full_lineage(tmp_path):
    profile = load_profile(_mini_profile(tmp_path), artifact_root=tmp_path / "artifacts")
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    manifest = train_profile(profile.training_setup, catalog=cat)
    assert [d for d in manifest["domains_order"]] == ["chat", "math"]
    frozen = [r for d in manifest["domains"].values() for r in d["rounds"] if r["status"] == "frozen"]
    assert frozen, "no stack was frozen"
    math_rounds = [r for r in manifest["domains"]["math"]["rounds"] if r["status"] == "frozen"]
    stack = math_rounds[0] if math_rounds else frozen[-1]

    # which data went into this stack? transitively: its datasets, their sources, the base and parent stacks
    up = cat.upstream(stack["version"])
    kinds = {a["kind"] for a in up}
    assert {"dataset", "base"} <= kinds, kinds
    assert any(a["kind"] in ("source", "generated") or a["uri"].startswith(("generated://", "file://")) for a in up)
    uris = {a["uri"] for a in up}
    assert f"dataset://mini/{stack['domain']}/train" in uris
    if stack["domain"] == "math" and manifest["domains"]["math"].get("null_space"):
        assert "dataset://mini/chat/val" in uris  # the null space came from chat's validation data
        assert any(a["kind"] == "null_space" for a in up)

    # and the other way: a training record leads to the stack that was trained on it
    train = pd.read_parquet(cat.latest(f"dataset://mini/{stack['domain']}/train")["path"])
    holders = {a["version"] for a in cat.artifacts_containing(train["record_id"].iloc[0])}
    assert stack["version"] in holders

    # the stack file carries the same lineage in its own metadata
    sf = load_stack(stack["file"])
    assert sf.metadata["lineage"]["train_dataset_version"] == cat.latest(
        f"dataset://mini/{stack['domain']}/train")["version"]

    # a second call resumes: nothing is retrained
    again = train_profile(profile.training_setup, catalog=cat)
    assert again["domains"] == manifest["domains"]

    # changed data (what the dataset-change trigger reacts to) trains a fresh run folder; the old one stays
    import json

    pointer = profile.store / "training" / "main" / "current.json"
    old = json.loads(pointer.read_text())
    before = {a["version"] for a in cat.list_artifacts("stack")}
    raw = yaml.safe_load(profile.source_path.read_text())
    raw["data"]["sources"]["chat"][0]["rows"] = 100
    profile.source_path.write_text(yaml.safe_dump(raw))
    changed = load_profile(profile.source_path, artifact_root=tmp_path / "artifacts")
    prepare_all(changed.context, changed.data, catalog=cat)
    fresh = train_profile(changed.training_setup, catalog=cat)
    new = json.loads(pointer.read_text())
    assert new["key"] != old["key"] and new["data"]["chat"] != old["data"]["chat"]
    assert (Path(old["dir"]) / "manifest.json").exists() and Path(stack["file"]).exists()
    assert fresh["domains"]["chat"]["train_version"] == new["data"]["chat"][0]
    # the fresh run's stacks are new versions (a round may be kept or discarded on the new data)
    fresh_versions = {r["version"] for d in fresh["domains"].values() for r in d["rounds"] if r["status"] == "frozen"}
    assert fresh_versions and not fresh_versions & before
    assert fresh_versions <= {a["version"] for a in cat.list_artifacts("stack")}

    # pinning the old data versions resumes the old run: nothing is trained
    from brainstacks_core.training.run import resolve_data_versions

    pinned = {d: v[0] for d, v in old["data"].items()}
    assert resolve_data_versions(changed.training_setup, cat) != pinned
    back = train_profile(changed.training_setup, catalog=cat, data_versions=pinned)
    assert back["domains"] == manifest["domains"]
    assert json.loads(pointer.read_text())["key"] == old["key"]
    with pytest.raises(LookupError, match="no prepared dataset for version"):
        train_profile(changed.training_setup, catalog=cat, data_versions={"chat": "0000000000000000"})


def test_the_base_row_records_the_sha256_of_the_base_files(tmp_path):
    """base://<profile> carries a content sha256 of the tiny base's files (weights, config, tokenizer),
    the same as sha256sum over them; it does not change when the base is resolved again."""
    import hashlib

    from brainstacks_core.training.run import ensure_base

    profile = load_profile(_mini_profile(tmp_path), artifact_root=tmp_path / "artifacts")
    cat = Catalog(profile.catalog_path)
    info = ensure_base(profile.training_setup, catalog=cat)
    row = cat.latest("base://mini")
    files = sorted(p for p in Path(info.path).iterdir() if p.is_file() and p.name != "brainstacks_base.json")
    assert any(p.suffix == ".safetensors" for p in files) and any(p.name == "config.json" for p in files)
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    assert row["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    ensure_base(profile.training_setup, catalog=cat)
    assert cat.latest("base://mini")["sha256"] == row["sha256"]
