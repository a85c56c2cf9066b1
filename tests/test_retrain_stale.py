"""Retrain only what is stale: a one-record change in the last domain retrains that domain only (issue 12)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import brainstacks_core.training.continual as continual
from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.profile import load_profile
from brainstacks_core.training.plan import plan_run
from brainstacks_core.training.run import train_profile

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["name"] = "stale"
    raw["data"]["domains"] = ["chat", "math"]
    math_rows = [{"instruction": f"What is {i} plus {i + 1}?", "output": f"{i} plus {i + 1} is {2 * i + 1}."}
                 for i in range(60)]
    (tmp_path / "math.json").write_text(json.dumps(math_rows))
    raw["data"]["sources"] = {"chat": [{"kind": "generated", "generator": "chat", "rows": 60}],
                              "math": [{"kind": "local", "format": "alpaca", "path": str(tmp_path / "math.json")}]}
    raw["data"]["max_rows_per_domain"] = 60
    raw["base"]["tiny"].update(vocab_size=512, hidden_size=32, intermediate_size=64, pretrain_steps=5,
                               pretrain_batch_size=4, seq_len=64)
    raw["moe"].update(rank=4)
    raw["training"].update(max_rounds=1, basis={"k": 4}, eval_rows=8, null_space_val_rows=8, ablation=False,
                           sft={"max_steps": 3, "eval_steps": 3, "batch_size": 8, "learning_rate": 0.01,
                                "warmup_steps": 0, "max_length": 64})
    path = tmp_path / "stale.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_one_record_change_in_the_last_domain_retrains_only_that_domain(tmp_path, monkeypatch):
    cfg = _profile(tmp_path)
    trained: list[str] = []
    real = continual.train_round

    def counting(model, tokenizer, data, *args, **kwargs):
        trained.append(data.domain)
        return real(model, tokenizer, data, *args, **kwargs)

    monkeypatch.setattr(continual, "train_round", counting)
    profile = load_profile(cfg, artifact_root=tmp_path / "art")
    cat = Catalog(profile.catalog_path)
    prepare_all(profile.context, profile.data, catalog=cat)
    first = train_profile(profile.training_setup, catalog=cat)
    assert sorted(set(trained)) == ["chat", "math"]
    chat_files = [r["file"] for r in first["domains"]["chat"]["rounds"] if r["status"] == "frozen"]

    # edit ONE record of the last domain (math)
    rows = json.loads((tmp_path / "math.json").read_text())
    rows[7]["output"] = "7 plus 8 is fifteen (15)."
    (tmp_path / "math.json").write_text(json.dumps(rows))
    profile = load_profile(cfg, artifact_root=tmp_path / "art")
    prepare_all(profile.context, profile.data, catalog=cat)
    plan = {r["domain"]: r for r in plan_run(profile.training_setup, catalog=cat)}
    assert plan["chat"]["action"] == "reuse" and plan["math"]["action"] == "train", plan
    assert "math" in plan["math"]["reason"] or "data" in plan["math"]["reason"], plan["math"]

    trained.clear()
    second = train_profile(profile.training_setup, catalog=cat)
    counts = {d: trained.count(d) for d in ("chat", "math")}
    assert counts == {"chat": 0, "math": 1}, counts  # rounds trained per domain after the edit
    new_chat = [r["file"] for r in second["domains"]["chat"]["rounds"] if r["status"] == "frozen"]
    # the unchanged chat stacks are the same files (hard links), in the new run folder
    assert len(new_chat) == len(chat_files)
    for old, new in zip(chat_files, new_chat):
        assert os.path.samefile(old, new) or Path(old).read_bytes() == Path(new).read_bytes()
    assert second["domains"]["math"]["train_version"] != first["domains"]["math"]["train_version"]
