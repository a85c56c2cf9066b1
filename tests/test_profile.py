"""The typed profile: every key at every depth is checked at load, errors name file and dotted key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainstacks_core.profile import Profile, ProfileError, load_profile, profile_schema

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "configs").glob("*.yaml"))


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "configs" / "x.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _demo() -> dict:
    return yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_shipped_profile_loads_typed(path):
    profile = load_profile(path)
    assert isinstance(profile, Profile)
    assert set(profile.curriculum) <= set(profile.data.domains)
    assert path.read_text(encoding="utf-8").startswith("# brainstacks "), "a config starts with its command"


# (dotted path to set, bad key's parent, good-typed value of a misspelled key, wrongly typed value of a real key)
SECTIONS = [
    ("data", "ngrams", 13, "ngram", "thirteen"),
    ("data.sources.chat.0", "generater", "chat", "rows", "many"),
    ("base", "knd", "tiny", "load_in_4bit", "sometimes"),
    ("base.tiny", "hiden_size", 32, "hidden_size", "wide"),
    ("moe", "experts", 4, "rank", "sixteen"),
    ("training", "max_round", 2, "max_rounds", "two"),
    ("training.sft", "max_step", 3, "max_steps", [1, 2]),
    ("training.basis", "kk", 8, "k", "eight"),
    ("router", "chat_flor", 0.2, "chat_floor", "high"),
    ("eval", "limt", 5, "limit", "all"),
    ("experiment1", "rank", 64, "lora_rank", "big"),
    ("", "trainig", {}, "seed", "zero"),
]


def _set(raw: dict, dotted: str, key: str, value) -> None:
    node = raw
    for part in [p for p in dotted.split(".") if p]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[key] = value


@pytest.mark.parametrize("section,typo,typo_value,key,bad_value", SECTIONS, ids=[s[0] or "top" for s in SECTIONS])
def test_misspelled_key_and_wrong_type_name_file_and_dotted_path(tmp_path, section, typo, typo_value, key,
                                                                 bad_value):
    prefix = f"{section}." if section else ""
    raw = _demo()
    _set(raw, section, typo, typo_value)
    path = _write(tmp_path, raw)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert f"{path}: {prefix}{typo}: extra inputs are not permitted" in str(err.value)

    raw = _demo()
    _set(raw, section, key, bad_value)
    with pytest.raises(ProfileError) as err:
        load_profile(_write(tmp_path, raw))
    assert f"{path}: {prefix}{key}: " in str(err.value), str(err.value)


def test_training_domain_missing_from_data_is_refused(tmp_path):
    raw = _demo()
    raw["training"]["domains"] = ["chat", "legal"]
    path = _write(tmp_path, raw)
    with pytest.raises(ProfileError, match=r"x\.yaml: training\.domains\.1: domain 'legal' is not a data domain"):
        load_profile(path)
    raw["training"]["domains"] = ["code"]
    raw["experiment1"] = {"domain": "chat"}
    with pytest.raises(ProfileError, match=r"experiment1\.domain: domain 'chat' is not trained"):
        load_profile(_write(tmp_path, raw))


def test_missing_file_and_non_mapping_are_clear(tmp_path):
    with pytest.raises(ProfileError, match="profile not found"):
        load_profile(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match="must be a YAML mapping"):
        load_profile(bad)


def test_sections_are_typed_models_not_dicts():
    profile = load_profile(ROOT / "configs" / "demo.yaml")
    assert profile.training.sft.max_steps == 50 and profile.training.basis.k == 8
    assert profile.moe.scale == pytest.approx(4.0)
    assert profile.data.base_dir == ROOT


def test_schema_describes_every_field():
    schema = profile_schema()
    missing = [f"{name}.{field}" for name, d in [("Profile", schema), *schema["$defs"].items()]
               for field, spec in d.get("properties", {}).items() if "description" not in spec]
    assert not missing
    assert schema["$defs"]["TrainingConfig"]["additionalProperties"] is False


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_config_check_and_schema(tmp_path):
    ok = _cli("config", "check", "configs/demo.yaml", "--json")
    assert ok.returncode == 0, ok.stderr
    resolved = json.loads(ok.stdout)
    assert resolved["training"]["sft"]["max_steps"] == 50 and resolved["router"]["gate_threshold"] == 0.12
    raw = _demo()
    raw["training"]["sft"]["max_step"] = 3
    path = _write(tmp_path, raw)
    bad = _cli("config", "check", str(path))
    assert bad.returncode == 2 and f"{path}: training.sft.max_step: extra inputs are not permitted" in bad.stderr
    assert "Traceback" not in bad.stderr
    schema = _cli("config", "schema")
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"] == "Profile"


def test_config_check_refuses_an_unknown_eval_task(tmp_path):
    raw = _demo()
    raw["eval"]["tasks"] = ["demo_math", "demo_mth"]
    path = _write(tmp_path, raw)
    bad = _cli("config", "check", str(path))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert f"{path}: eval.tasks: unknown eval task 'demo_mth'" in bad.stderr and "Traceback" not in bad.stderr
