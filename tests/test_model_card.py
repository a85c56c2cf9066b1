"""Model cards keep the sources of a stack's rows apart from the benchmarks the rows were decontaminated against."""

from __future__ import annotations

from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.reporting.model_card import model_card


def _catalog(tmp_path) -> Catalog:
    cat = Catalog(tmp_path / "catalog.duckdb")
    common = dict(code_version="c", config_hash=None, sha256=None)
    cat.record_artifact(uri="generated://math?rows=400&seed=0", version="src-math", kind="source", path=None, **common)
    cat.record_artifact(uri="file://shared/gsm8k/test.jsonl", version="bench-gsm8k", kind="eval_set",
                        path="gsm8k/test.jsonl", **common)
    for split in ("train", "val"):
        cat.record_artifact(uri=f"dataset://demo/math/{split}", version=f"ds-{split}", kind="dataset", path=None,
                            inputs=["src-math", "bench-gsm8k"],
                            metadata={"split": split, "counts": {split: 300 if split == "train" else 40}}, **common)
    return cat


def test_card_lists_row_sources_and_decontamination_benchmarks_apart(tmp_path):
    manifest = {"domains_order": ["math"], "base_fingerprint": None, "config_hash": "h",
                "domains": {"math": {"train_version": "ds-train", "val_version": "ds-val", "rounds": []}}}
    rnd = {"round": 1, "stack_id": "math-r1", "version": None, "file": None, "loss_before": 2.0, "loss_after": 1.5}
    md = model_card("demo", "main", manifest, "math", rnd, _catalog(tmp_path))
    assert "| split | dataset version | rows | sources of the rows | decontaminated against |" in md
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.splitlines() if line.startswith("| train ") or line.startswith("| val ")}
    for split, n in (("train", "300"), ("val", "40")):
        _, version, count, sources, benchmarks = rows[split]
        assert (version, count) == (f"`ds-{split}`", n)
        assert sources == "`generated://math?rows=400&seed=0` @ `src-math`"  # the benchmark is no source of a row
        assert benchmarks == "`file://shared/gsm8k/test.jsonl` @ `bench-gsm8k`"
