"""Preference pairs (the DPO stage's data): formats, contract, quarantine, version, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from brainstacks_core.data.config import PreferenceSourceConfig
from brainstacks_core.data.preferences import prepare_preferences
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.context import StoreContext

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _ctx(tmp_path: Path) -> StoreContext:
    return StoreContext(name="t", store=tmp_path / "store", repo_root=tmp_path)


def _broken_file(tmp_path: Path) -> Path:
    rows = [json.dumps({"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away."}),
            json.dumps({"prompt": "Say hi", "chosen": "Same", "rejected": "Same"}),
            "{not json",
            json.dumps({"prompt": "Say bye", "chosen": "   ", "rejected": "Bye."}),
            json.dumps({"prompt": "Count", "chosen": 3, "rejected": "three"}),
            json.dumps({"prompt": "Name a colour", "chosen": "Blue.", "rejected": "Seven."})]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_broken_preference_file_quarantines_each_bad_row_with_file_row_and_field(tmp_path):
    path = _broken_file(tmp_path)
    cat = Catalog(tmp_path / "catalog.duckdb")
    p = prepare_preferences(_ctx(tmp_path), "chat", [PreferenceSourceConfig(kind="local", path="prefs.jsonl")], cat)
    assert sorted(p.pairs["prompt"]) == ["Name a colour", "Say hi"]
    q = p.quarantine.set_index("source_row_key")
    assert sorted(q.index) == ["line:2", "line:3", "line:4", "line:5"]  # every bad row kept, with its reason
    assert q.loc["line:2", "field"] == "rejected" and "identical to 'chosen'" in q.loc["line:2", "reason"]
    assert q.loc["line:3", "check"] == "readable" and "malformed JSON" in q.loc["line:3", "reason"]
    assert q.loc["line:4", "field"] == "chosen" and q.loc["line:4", "check"] == "not_blank"
    assert q.loc["line:5", "field"] == "chosen" and "must be a string" in q.loc["line:5", "reason"]
    assert all(str(path) in r for r in q["reason"])  # the file is named in every reason
    written = pd.read_parquet(p.path / "quarantine.parquet")
    assert len(written) == 4 and len(pd.read_parquet(p.path / "pairs.parquet")) == 2
    art = cat.get(p.version)
    assert art["uri"] == "dataset://t/chat/preferences"
    assert [u["version"] for u in cat.upstream(p.version)] == list(p.sources)
    assert set(cat.members(p.version)["record_id"]) == set(p.pairs["record_id"])


def test_preference_version_follows_content(tmp_path):
    ctx = _ctx(tmp_path)
    spec = [PreferenceSourceConfig(kind="generated", generator="chat_pairs", rows=12)]
    a, b = prepare_preferences(ctx, "chat", spec), prepare_preferences(ctx, "chat", spec)
    assert a.version == b.version and len(a.pairs) == 12 and a.quarantine.empty
    assert (a.pairs["chosen"] != a.pairs["rejected"]).all()
    c = prepare_preferences(ctx, "chat", [PreferenceSourceConfig(kind="generated", generator="chat_pairs", rows=13)])
    assert c.version != a.version


def test_all_rows_rejected_is_an_error_naming_the_reason(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "chosen": "y", "rejected": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"no usable preference pair.*bad.jsonl: line:1: field 'rejected'"):
        prepare_preferences(_ctx(tmp_path), "chat", [PreferenceSourceConfig(kind="local", path="bad.jsonl")])


@pytest.mark.shared_data
@pytest.mark.parametrize("fmt,rel,rows", [("hh_rlhf", "hh_rlhf/harmless-base/test.jsonl.gz", 2312),
                                          ("sharegpt_dpo", "llamafactory_dpo_en_demo/dpo_en_demo.json", 300)])
def test_real_preference_files(tmp_path, fmt, rel, rows):
    if not (SHARED / rel).is_file():
        pytest.skip(f"shared data absent: {SHARED / rel}")
    p = prepare_preferences(_ctx(tmp_path), "chat", [PreferenceSourceConfig(kind="local", format=fmt,
                                                                            path=str(SHARED / rel))])
    assert len(p.pairs) + len(p.quarantine) >= rows - 10  # exact duplicates collapse, nothing vanishes silently
    assert len(p.pairs) >= 0.75 * rows
    assert not p.pairs["prompt"].str.contains("\n\nHuman:").any()
    assert (p.pairs["chosen"].str.strip() != p.pairs["rejected"].str.strip()).all()
