"""The Prefect flow and the CLI over it (ephemeral harness), plus the layering rule."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
