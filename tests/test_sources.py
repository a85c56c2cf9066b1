"""Sources and format adapters: real shared files, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from brainstacks_core.data.config import DataConfig, SourceConfig
from brainstacks_core.data.sources import SourceError, normalise_source, read_hf

SHARED = Path(os.environ.get("BRAINSTACKS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _cfg(tmp_path: Path, **sources) -> DataConfig:
    return DataConfig(domains=["chat"], sources={"chat": [SourceConfig(kind="local", format="alpaca", path="x")]},
                      base_dir=tmp_path)


def _load(tmp_path: Path, name: str, content: bytes, fmt: str = "alpaca"):
    path = tmp_path / name
    path.write_bytes(content)
    spec = SourceConfig(kind="local", format=fmt, path=name)
    return normalise_source(spec, "chat", _cfg(tmp_path), tmp_path / "store", tmp_path / "cache")


def _conserved(batch) -> bool:
    return batch.n_in == len(batch.records) + len(batch.quarantine)


def test_malformed_json_line_is_quarantined_with_file_and_line(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    batch = _load(tmp_path, "d.jsonl", f"{good}\n{{not json\n{good.replace('a', 'c')}\n".encode())
    assert len(batch.records) == 2 and _conserved(batch)
    reason = batch.quarantine["reason"].iloc[0]
    assert "d.jsonl" in reason and "line:2" in reason and "malformed JSON" in reason


def test_missing_field_and_wrong_type_name_the_field(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "x"}, {"instruction": "y", "output": 5}]
    batch = _load(tmp_path, "d.json", json.dumps(rows).encode())
    assert len(batch.records) == 1 and _conserved(batch)
    q = batch.quarantine.set_index("source_row_key")
    assert q.loc["element:1", "field"] == "output" and "missing" in q.loc["element:1", "reason"]
    assert q.loc["element:2", "field"] == "output" and "expected a string, got int" in q.loc["element:2", "reason"]
    assert all("d.json" in r for r in q["reason"])


def test_invalid_utf8_line_is_quarantined(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"}).encode()
    batch = _load(tmp_path, "d.jsonl", good + b"\n" + b'{"instruction": "\xff\xfe", "output": "b"}\n')
    assert len(batch.records) == 1 and _conserved(batch)
    assert "invalid UTF-8" in batch.quarantine["reason"].iloc[0] and "line:2" in batch.quarantine["reason"].iloc[0]


def test_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match=r"empty.jsonl.*(empty|0 rows)"):
        _load(tmp_path, "empty.jsonl", b"")


def test_missing_file_names_the_source(tmp_path):
    spec = SourceConfig(kind="local", format="alpaca", path="nope.json")
    with pytest.raises(SourceError, match="nope.json"):
        normalise_source(spec, "chat", _cfg(tmp_path), tmp_path)


def test_jsonl_gz_and_csv_and_parquet(tmp_path):
    import pandas as pd

    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl.gz", "d.csv", "d.parquet"):
        spec = SourceConfig(kind="local", format="alpaca", path=name)
        batch = normalise_source(spec, "chat", _cfg(tmp_path), tmp_path / "s", tmp_path / "c")
        assert batch.records["prompt"].tolist() == ["q0", "q1", "q2"], name
        assert batch.records["source_version"].nunique() == 1 and len(batch.records["source_version"][0]) == 64


def test_record_id_is_stable_and_content_based(tmp_path):
    rows = json.dumps([{"instruction": "a", "output": "b"}]).encode()
    a = _load(tmp_path, "a.json", rows).records["record_id"][0]
    b = _load(tmp_path, "b.json", rows).records["record_id"][0]
    assert a == b and len(a) == 16


def test_hf_source_requires_pinned_revision_and_fails_fast_offline(monkeypatch):
    with pytest.raises(ValueError, match="revision"):
        SourceConfig(kind="hf", repo="openai/gsm8k", config="main")
    spec = SourceConfig(kind="hf", repo="openai/gsm8k", config="main", revision="e53f048856ff4f594e959d75785d2c2d37b678ee")

    def no_net(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr("socket.create_connection", no_net)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SourceError, match=r"openai/gsm8k@e53f.*local"):
        read_hf(spec, None)


REAL = [("alpaca", "alpaca/alpaca_200.json", 200), ("alpaca", "llamafactory_alpaca_en_demo/alpaca_en_demo.json", 999),
        ("alpaca", "codealpaca/code_alpaca_2k.json", 2017), ("gsm8k", "gsm8k/train.jsonl", 7473),
        ("alpaca", "medical_meadow/medical_meadow_small.json", 5942), ("pubmedqa", "pubmedqa/ori_pqal.json", 1000),
        ("logiqa", "logiqa/Eval.txt", 651), ("mcq", "medqa/test.jsonl", 1273), ("mcq", "medmcqa/test.jsonl", 2816),
        ("template_text", "guanaco_llama2_1k/train-00000-of-00001-9ad84bb9cf65a42f.parquet", 1000),
        ("sharegpt", "llamafactory_dpo_en_demo/dpo_en_demo.json", 300)]


@pytest.mark.shared_data
@pytest.mark.parametrize("fmt,rel,rows", REAL, ids=[r[1].split("/")[0] for r in REAL])
def test_real_shared_files(tmp_path, fmt, rel, rows):
    if not (SHARED / rel).is_file():
        pytest.skip(f"shared data absent: {SHARED / rel}")
    spec = SourceConfig(kind="local", format=fmt, path=str(SHARED / rel))
    batch = normalise_source(spec, "chat", _cfg(tmp_path), tmp_path / "s", tmp_path / "c")
    assert batch.n_in == rows and _conserved(batch)
    assert len(batch.records) >= 0.95 * rows
    assert batch.records["prompt"].str.len().min() > 0
    if fmt == "gsm8k":
        assert batch.records["response"].str.contains("#### ").all()


def test_gzip_cut_mid_stream_keeps_complete_rows_and_quarantines_the_tail(tmp_path):
    rows = [json.dumps({"instruction": f"question number {i} " * 5, "output": f"answer {i} " * 5}) for i in range(400)]
    whole = gzip.compress("\n".join(rows).encode() + b"\n")
    batch = _load(tmp_path, "cut.jsonl.gz", whole[: len(whole) // 2])
    assert 0 < len(batch.records) < 400 and _conserved(batch)
    keys = batch.records["source_row_key"].tolist()
    assert keys == [f"line:{i}" for i in range(1, len(keys) + 1)]  # every complete row before the cut
    tail = batch.quarantine.iloc[-1]
    assert "cut.jsonl.gz" in tail["reason"] and "cut after line" in tail["reason"]


def test_empty_file_through_the_cli_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    import yaml

    (tmp_path / "empty.json").write_bytes(b"")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "artifact_root": str(tmp_path / "art"), "data": {
        "domains": ["chat"], "sources": {"chat": [{"kind": "local", "format": "alpaca",
                                                    "path": str(tmp_path / "empty.json")}]}}}))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "flows.cli", "prepare", "--config", str(cfg)], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "empty.json" in lines[0] and "empty file" in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_keys_are_physical_lines_despite_blank_lines(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    batch = _load(tmp_path, "d.jsonl", f"{good}\n\n\n{good.replace('a', 'c')}\n{{bad\n".encode())
    assert batch.records["source_row_key"].tolist() == ["line:1", "line:4"]
    assert batch.quarantine["source_row_key"].tolist() == ["line:5"]


def test_json_array_in_a_jsonl_file_names_elements(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}, ["not", "an", "object"]]
    batch = _load(tmp_path, "arr.jsonl", json.dumps(rows, indent=2).encode())
    assert batch.records["source_row_key"].tolist() == ["element:0", "element:1"]
    assert "element 2: expected an object, got an array" in batch.quarantine["reason"].iloc[0]


def test_null_blank_and_source_field_names(tmp_path):
    rows = [{"instruction": "a", "output": None}, {"instruction": "b"}, {"instruction": "c", "output": "   "},
            {"instruction": "ok", "output": "fine"}]
    batch = _load(tmp_path, "n.json", json.dumps(rows).encode())
    q = batch.quarantine.set_index("source_row_key")
    assert "'output': is null" in q.loc["element:0", "reason"]
    assert "'output': missing" in q.loc["element:1", "reason"]
    assert q.loc["element:2", "field"] == "output" and "blank" in q.loc["element:2", "reason"]
    assert "response" not in " ".join(q["reason"])


def test_json_error_column_points_at_the_bad_character(tmp_path):
    bad = '{"instruction": "a", "output": "b",}'
    batch = _load(tmp_path, "c.jsonl", f'{{"instruction": "x", "output": "y"}}\n{bad}\n'.encode())
    assert f"line:2: malformed JSON at column {bad.index('}') + 1}:" in batch.quarantine["reason"].iloc[0]
