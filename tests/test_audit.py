"""``brainstacks audit`` on a real prepared catalog (issue 9, item 8)."""

from __future__ import annotations

import argparse

import pandas as pd
from two_domain_profile import write_two_domain_profile

from brainstacks_core.data.pipeline import prepare_all
from brainstacks_core.profile import load_profile
from flows.audit import cli_audit


def _data(profile):
    """The data stage's arguments of a profile: its store context and ``data:`` section."""
    return profile.context, profile.data


def _profile(tmp_path):
    chat = [{"instruction": f"Write a friendly letter {i}", "output": f"Dear friend {i}"} for i in range(15)]
    chat.append({"instruction": "Write a python function def f that will return a loop", "output": "def f(): return 1"})
    cfg = write_two_domain_profile(tmp_path, chat, 15)
    return cfg


def _audit(cfg, capsys, **kw) -> tuple[int, str]:
    base = {"artifact": None, "record": None, "list": False, "current": False}
    rc = cli_audit(argparse.Namespace(config=str(cfg), artifact_root=None, **{**base, **kw}))
    return rc, capsys.readouterr().out


def test_record_shows_file_row_origin_run_ids_and_a_legend(tmp_path, capsys):
    cfg = _profile(tmp_path)
    res = prepare_all(*_data(load_profile(cfg)), run_ids={"flow_run_id": "flow-123", "task_run_id": "task-456"})
    moves = pd.read_parquet(res["code"].moves_path)
    rid = moves[moves["action"] == "move"]["record_id"].iloc[0]
    rc, out = _audit(cfg, capsys, record=rid)
    assert rc == 0
    assert out.startswith("depth: 0 = a dataset holding the record")
    assert f"file {tmp_path / 'chat.json'}" in out and "element:15" in out
    assert "moved from domain 'chat' to 'code'" in out
    assert "created 20" in out and "flow run flow-123" in out and "task run task-456" in out


def test_dataset_version_as_prepare_prints_it_lists_every_split(tmp_path, capsys):
    cfg = _profile(tmp_path)
    version = prepare_all(*_data(load_profile(cfg)))["code"].version
    rc, out = _audit(cfg, capsys, artifact=version)
    assert rc == 0 and out.startswith("depth: 0 = the artifact asked about")
    for split in ("train", "val", "test", "router"):
        assert f"dataset://t/code/{split}  @ {version}-{split}" in out
    assert "local:" in out and "chat.json" in out  # the moved row's source is an input of code


def test_current_hides_superseded_versions(tmp_path, capsys):
    cfg = _profile(tmp_path)
    old = prepare_all(*_data(load_profile(cfg)))["code"].version
    path = tmp_path / "code.json"
    path.write_text(path.read_text().replace("f3", "g3"))
    new = prepare_all(*_data(load_profile(cfg)))["code"].version
    assert new != old
    _, everything = _audit(cfg, capsys, list=True)
    _, current = _audit(cfg, capsys, list=True, current=True)
    assert f"{old}-train" in everything and f"{new}-train" in everything
    assert f"{old}-train" not in current and f"{new}-train" in current


def test_a_stack_uri_without_a_round_lists_the_rounds_through_the_cli(tmp_path):
    """``audit --artifact stack://p/main/math`` names the rounds that exist instead of a bare "no artifact"."""
    import subprocess
    import sys
    from pathlib import Path

    from brainstacks_core.lineage.catalog import Catalog

    cfg = _profile(tmp_path)
    profile = load_profile(cfg)
    cat = Catalog(profile.catalog_path)
    for r, v in ((1, "stk-a1"), (2, "stk-a2")):
        cat.record_artifact(uri=f"stack://{profile.name}/main/code/r{r}", version=v, kind="stack", path=None,
                            sha256=None, code_version="c", config_hash="h", inputs=[])
    exe = str(Path(sys.executable).parent / "brainstacks")
    run = lambda ref: subprocess.run([exe, "audit", "--config", str(cfg), "--artifact", ref],  # noqa: E731
                                     capture_output=True, text=True, timeout=120)
    out = run(f"stack://{profile.name}/main/code")
    assert out.returncode == 1
    assert "its rounds are:" in out.stdout, out.stdout + out.stderr
    assert f"stack://{profile.name}/main/code/r1  stk-a1" in out.stdout
    assert f"stack://{profile.name}/main/code/r2  stk-a2" in out.stdout
    typo = run(f"stack://{profile.name}/main/code/r9")
    assert typo.returncode == 1 and "did you mean" in typo.stdout and "/code/r1" in typo.stdout
