"""Source watchers (issue 12): stat then sha256 for files, tracked hub branches, the watch-sources flow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from two_domain_profile import write_two_domain_profile

from brainstacks_core.data import watch
from brainstacks_core.data.config import SourceConfig
from brainstacks_core.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
CHAT = [{"instruction": f"Write a friendly letter {i}", "output": f"Dear friend {i}"} for i in range(12)]


def _data(profile):
    """The data stage's arguments of a profile: its store context and ``data:`` section."""
    return profile.context, profile.data


def _edit_one_code_record(tmp_path: Path) -> None:
    rows = json.loads((tmp_path / "code.json").read_text())
    rows[3]["output"] = "return 3"
    (tmp_path / "code.json").write_text(json.dumps(rows))


def test_local_files_stat_then_hash_and_commit_after_success(tmp_path, monkeypatch):
    cfg = write_two_domain_profile(tmp_path, CHAT, 12)
    profile = load_profile(cfg)
    first = watch.check_sources(profile.context, profile.data)
    assert first.changed == ["chat", "code"] and "first check" in first.reasons["code"][0]
    assert watch.check_sources(*_data(profile)).changed == ["chat", "code"]  # nothing committed yet: still changed
    watch.commit_state(first)
    assert json.loads(watch.state_path(profile.context).read_text())["sources"]

    hashed: list[Path] = []
    real = watch.sha256_file
    monkeypatch.setattr(watch, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    assert watch.check_sources(*_data(profile)).changed == [] and hashed == []  # same size+mtime: no hash at all

    st = (tmp_path / "code.json").stat()  # touched: hashed once, unchanged
    os.utime(tmp_path / "code.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = watch.check_sources(profile.context, profile.data)
    assert touched.changed == [] and hashed == [tmp_path / "code.json"]
    watch.commit_state(touched)

    _edit_one_code_record(tmp_path)
    edited = watch.check_sources(profile.context, profile.data)
    assert edited.changed == ["code"] and "sha256" in edited.reasons["code"][0]
    watch.commit_state(edited)

    raw = yaml.safe_load(cfg.read_text())  # a profile edit of the data section: every domain
    raw["data"]["margin"] = 3
    cfg.write_text(yaml.safe_dump(raw))
    assert watch.check_sources(*_data(load_profile(cfg))).changed == ["chat", "code"]


def test_tracked_hub_branch_offline_pinned_and_moving(tmp_path, monkeypatch, caplog):
    pinned = SourceConfig(kind="hf", repo="org/ds", revision="a" * 40)
    tracked = SourceConfig(kind="hf", repo="org/ds", track="main")
    with pytest.raises(ValueError, match="hf sources only"):
        SourceConfig(kind="local", path="x.json", track="main")
    with pytest.raises(ValueError, match="track"):
        SourceConfig(kind="hf", repo="org/ds")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level("WARNING"):
        assert watch._check_source(tracked, None, {"hub": "k", "commit": "c1"})[0] is False
    assert any("treated as unchanged" in r.message for r in caplog.records)
    assert watch._check_source(pinned, None, {"fixed": "a" * 40})[0] is False  # a pin never moves

    # the hub answering: the branch head is what is compared (one dataset_info call, with a timeout)
    from huggingface_hub import HfApi

    heads = iter(["c1", "c2"])
    calls = []

    class Info:
        def __init__(self, sha):
            self.sha = sha

    def dataset_info(self, repo, revision=None, timeout=None):
        calls.append((repo, revision, timeout))
        return Info(next(heads))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
    assert watch._check_source(tracked, None, {"commit": "c1"})[0] is False
    changed, entry, why = watch._check_source(tracked, None, {"commit": "c1"})
    assert changed and entry["commit"] == "c2" and "c1 -> c2" in why
    assert calls == [("org/ds", "main", watch.HUB_TIMEOUT_S)] * 2


def test_watch_flow_prepares_only_changed_domains_and_emits_one_event(harness, tmp_path, monkeypatch):
    import flows.prepare_data as prep
    from flows.watch import watch_sources

    events = []
    real = prep.emit_data_changed
    monkeypatch.setattr(prep, "emit_data_changed", lambda *a: events.append(real(*a)) or events[-1])
    cfg = str(write_two_domain_profile(tmp_path, CHAT, 12))

    out = watch_sources(config_path=cfg)
    assert out["changed"] == ["chat", "code"] and set(out["prepared"]) == {"chat", "code"}
    assert len(events) == 1 and events[0].payload["domains"] == ["chat", "code"]

    assert watch_sources(config_path=cfg)["changed"] == []  # nothing changed: nothing prepared, no event
    assert len(events) == 1

    _edit_one_code_record(tmp_path)
    assert watch_sources(config_path=cfg, dry_run=True)["prepared"] == {}
    out = watch_sources(config_path=cfg)
    assert out["changed"] == ["code"] and list(out["prepared"]) == ["code"] and out["prepared"]["code"]["new_version"]
    assert len(events) == 2 and events[1].payload["domains"] == ["code"]

    # a new chat row that belongs to code: chat's source changed, and code (which receives it) is written too
    rows = json.loads((tmp_path / "chat.json").read_text())
    rows.append({"instruction": "Write a python function def f that will return a loop", "output": "def f(): return 1"})
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    out = watch_sources(config_path=cfg)
    assert out["changed"] == ["chat"] and list(out["prepared"]) == ["chat", "code"], out
    assert out["prepared"]["code"]["new_version"] and out["prepared"]["code"]["train"] is not None
    assert events[-1].payload["domains"] == [d for d in ("chat", "code") if out["prepared"][d]["new_version"]]


def test_prefect_yaml_watch_deployments_use_the_profiles_interval():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    for name, profile in [("watch-demo", "demo"), ("watch-shared", "shared"), ("watch-tinyllama-paper-local",
                          "tinyllama-paper-local"), ("watch-gemma3-12b-paper-local", "gemma3-12b-paper-local")]:
        d = deps[name]
        assert d["entrypoint"] == "flows/watch.py:watch_sources"
        assert d["parameters"]["config_path"] == f"configs/{profile}.yaml"
        interval = load_profile(ROOT / "configs" / f"{profile}.yaml").orchestration.watch_interval_seconds
        assert [s["interval"] for s in d["schedules"]] == [interval], name
    for profile in ("tinyllama-paper-local", "gemma3-12b-paper-local"):  # the paper runs have data to train on
        assert deps[f"prepare-{profile}"]["parameters"]["config_path"] == f"configs/{profile}.yaml"
        assert deps[f"retrain-{profile}-on-data-change"]["triggers"][0]["match"] == {
            "prefect.resource.id": f"brainstacks.profile.{load_profile(ROOT / 'configs' / f'{profile}.yaml').name}"}


def test_flow_forms_offer_profiles_domains_and_describe_every_field():
    from prefect.utilities.callables import parameter_schema

    from flows.continual_training import continual_training, train_domain
    from flows.params import DOMAINS, PROFILES
    from flows.pipeline import brainstacks_pipeline
    from flows.prepare_data import prepare_data
    from flows.watch import watch_sources

    assert "configs/demo.yaml" in PROFILES and "configs/tinyllama-paper-local.yaml" in PROFILES
    assert DOMAINS[:5] == ["chat", "code", "math", "medical", "reasoning"]
    for f in (brainstacks_pipeline, prepare_data, continual_training, train_domain, watch_sources):
        props = parameter_schema(f).model_dump()["properties"]
        assert props["config_path"]["enum"] == PROFILES, f.name
        assert all(p.get("description") for p in props.values()), (f.name, [k for k, p in props.items()
                                                                          if not p.get("description")])
    props = parameter_schema(train_domain).model_dump()["properties"]
    assert props["domain"]["enum"] == DOMAINS
    assert parameter_schema(watch_sources).model_dump()["properties"]["dry_run"]["type"] == "boolean"


def test_tracked_source_is_read_at_the_branch_head_or_the_last_commit_seen(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from brainstacks_core.data.config import DataConfig
    from brainstacks_core.data.sources import source_identity

    spec = SourceConfig(kind="hf", repo="org/ds", track="main")
    cfg = DataConfig(domains=["chat"], sources={"chat": [spec]})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "dataset_info", lambda self, repo, revision=None, timeout=None: type(
        "Info", (), {"sha": "head123"})())
    assert source_identity(spec, cfg, tmp_path)[1] == "head123"  # the dataset version names the commit read

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no commit was seen"):
        source_identity(spec, cfg, tmp_path)
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "sources.json").write_text(json.dumps(
        {"sources": {"chat|x": {"hub": watch._hf_key(spec), "commit": "seen456"}}}))
    assert source_identity(spec, cfg, tmp_path)[1] == "seen456"
    pinned = spec.model_copy(update={"revision": "pin789"})
    (tmp_path / "watch" / "sources.json").unlink()
    assert source_identity(pinned, cfg, tmp_path)[1] == "pin789"
