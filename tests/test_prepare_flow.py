"""The Prefect flow and the CLI over it (ephemeral harness), plus the layering rule."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _data(profile):
    """The data stage's arguments of a profile: its store context and ``data:`` section."""
    return profile.context, profile.data


def test_flow_one_domain_then_cli_table_and_audit(harness, tmp_path, capsys):
    from brainstacks_core.lineage.catalog import Catalog
    from flows.audit import cli_audit
    from flows.prepare_data import cli_prepare, prepare_data

    rows = prepare_data(config_path=str(ROOT / "configs" / "demo.yaml"), domain="math", artifact_root=str(tmp_path))
    assert list(rows) == ["math"] and rows["math"]["train"] > 200 and not rows["math"]["cache_hit"]
    art = Catalog(tmp_path / "demo" / "catalog.duckdb").latest("dataset://demo/math/train")
    assert art["flow_run_id"] and art["task_run_id"]
    args = argparse.Namespace(config=str(ROOT / "configs" / "demo.yaml"), artifact_root=str(tmp_path), domain="math")
    assert cli_prepare(args) == 0
    out = capsys.readouterr().out
    assert "dropped: benchmark" in out and "new_version" in out and "False" in out  # second run: no new version
    args = argparse.Namespace(config=str(ROOT / "configs" / "demo.yaml"), artifact_root=str(tmp_path),
                              artifact="dataset://demo/math/train", record=None, list=False)
    assert cli_audit(args) == 0
    assert "generated://math" in capsys.readouterr().out


def test_core_and_contracts_never_import_prefect():
    code = ("import sys, brainstacks_core.data.pipeline, brainstacks_core.lineage.catalog, data_contracts;"
            "sys.exit(1 if any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_prepare_printout_names_quarantine_file_reasons_and_move_evidence(tmp_path):
    """What `brainstacks prepare` prints after the table (the same summary dicts the flow returns)."""
    from two_domain_profile import write_two_domain_profile

    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.profile import load_profile
    from flows.prepare_data import format_details, format_table
    from tasks.data import _summary

    rows = [{"instruction": f"Write a friendly letter {i}", "output": f"Dear friend {i}"} for i in range(12)]
    rows += [{"instruction": "x"}, {"instruction": "y"},
             {"instruction": "Write a python function def f that will return a loop", "output": "def f(): return 1"}]
    cfg = write_two_domain_profile(tmp_path, rows, 12)
    summaries = {d: _summary(p) for d, p in prepare_all(*_data(load_profile(cfg))).items()}
    table, details = format_table(summaries), format_details(summaries)
    assert table.splitlines()[0].split()[:9] == ["domain", "version", "in", "kept", "moved_in", "moved_out",
                                                 "quarantined", "dropped", "flagged"]
    assert "quarantined 2 -> " in details and "quarantine/chat/" in details
    assert "most common: normalise: format on field 'output' (2)" in details
    assert "move chat -> code: local:" in details and "element:14" in details
    assert "evidence: def, function, loop, python, return" in details


def test_failures_that_cannot_change_are_not_retried():
    from prefect.states import Failed

    from brainstacks_core.data.pipeline import EmptyDomainError
    from brainstacks_core.data.sources import SourceError
    from tasks.data import _retry_unless_permanent, finalize_task, ingest_task

    for exc in (SourceError("f.json: empty file (0 bytes)"), EmptyDomainError("x: 0 rows left")):
        assert not _retry_unless_permanent(None, None, Failed(data=exc))
    assert _retry_unless_permanent(None, None, Failed(data=OSError("disk busy")))
    assert ingest_task.retry_condition_fn is _retry_unless_permanent is finalize_task.retry_condition_fn


def test_the_flow_reads_the_profile_once_and_hands_it_to_every_task(harness, tmp_path, monkeypatch):
    """One read of the YAML by the flow and one by its lineage hooks (START; the final event reuses it),
    however many tasks run: the tasks receive the loaded Profile. The profile file is edited while the
    first task runs: the run still finishes on what it read at the start."""
    import yaml

    import flows.prepare_data as fp
    import tasks.data as td
    import tasks.lineage as tl
    from brainstacks_core.profile import load_profile

    src = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "demo.yaml"
    cfg.write_text(yaml.safe_dump(src))
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return load_profile(*args, **kwargs)

    monkeypatch.setattr(fp, "load_profile", counted)
    monkeypatch.setattr(tl, "load_profile", counted)
    real_ingest = td.ingest_domain

    def ingest_then_edit(ctx, data, domain):  # a user edits the profile mid-run
        cfg.write_text(yaml.safe_dump({**src, "data": {**src["data"], "val_fraction": 0.4}}))
        return real_ingest(ctx, data, domain)

    monkeypatch.setattr(td, "ingest_domain", ingest_then_edit)
    rows = fp.prepare_data(config_path=str(cfg), domain="math", artifact_root=str(tmp_path / "art"))
    assert calls == [str(cfg), str(cfg)]  # the flow, then the START hook; 4 ingest + 3 more tasks read none
    expected = load_profile(ROOT / "configs" / "demo.yaml").data.val_fraction
    m = rows["math"]
    assert abs(m["val"] / (m["train"] + m["val"] + m["test"] + m["router"]) - expected) < 0.05
