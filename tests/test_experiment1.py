"""Experiment 1 on a tiny base: curves, parameter matching, frozen base, reach step."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from brainstacks_core.base.baseline import lora_parameter_count, moe_lora_parameter_count
from brainstacks_core.base.tiny_base import TinyBaseConfig, build_tiny_llama, train_tokenizer
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.training import experiment1 as exp1
from brainstacks_core.training.loss import completion_loss
from brainstacks_core.training.sft import SFTSettings

MOE = MoELoRAConfig(num_experts=4, rank=16, alpha=16.0)
LORA_RANK = 64
SETTINGS = SFTSettings(max_steps=8, eval_steps=4, learning_rate=5e-3, batch_size=8, warmup_steps=1, max_length=48)
BASE = TinyBaseConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, seed=0)


def _rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [{"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}.", "system": None}
            for a in range(9) for b in range(8)]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return df.iloc[:56], df.iloc[56:]


@pytest.fixture(scope="module")
def setup():
    train, val = _rows()
    tok = train_tokenizer([f"{r.prompt} {r.response}" for r in train.itertuples()], BASE.vocab_size)
    return train, val, tok


def _normalise(name: str) -> str:
    """PEFT / injected parameter name -> the bare base's name."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _assert_base_untouched(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    ref = dict(reference.named_parameters())
    frozen = {_normalise(n): p for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(_normalise(n) not in ref for n in trainable), trainable[:3]
    assert frozen.keys() == ref.keys()
    for name, p in ref.items():
        torch.testing.assert_close(frozen[name], p, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_experiment1_curves_params_and_frozen_base(setup, monkeypatch):
    train, val, tok = setup
    import brainstacks_core.training.best_stack as best_stack

    def _no_best_stack(*args, **kwargs):
        raise AssertionError("Experiment 1 must not use BestStackCallback")

    monkeypatch.setattr(best_stack.BestStackCallback, "__init__", _no_best_stack)
    built: list[torch.nn.Module] = []

    def build():
        built.append(build_tiny_llama(BASE, tok))
        return built[-1]

    result = exp1.run_experiment1(build, tok, train, val, SETTINGS, MOE, lora_rank=LORA_RANK)

    # two curves, one point per eval step, ending at max_steps
    steps = list(range(SETTINGS.eval_steps, SETTINGS.max_steps + 1, SETTINGS.eval_steps))
    for arm in (result.moe, result.lora):
        assert [s for s, _ in arm.val_curve] == steps, arm.val_curve
        assert all(math.isfinite(v) and v > 0 for _, v in arm.val_curve)
        assert arm.final_val_loss == arm.val_curve[-1][1]
        assert arm.train_curve and all(math.isfinite(v) for _, v in arm.train_curve)
        assert arm.train_curve[-1][0] == SETTINGS.max_steps
        assert math.isfinite(arm.final_completion_loss) and arm.seconds > 0
    assert result.moe.aux_curve and not result.lora.aux_curve
    # both arms learn: below the untrained base on the validation rows
    reference = build_tiny_llama(BASE, tok)
    base_loss = completion_loss(reference, tok, val, SETTINGS.max_length)
    assert result.moe.final_completion_loss < base_loss and result.lora.final_completion_loss < base_loss

    # parameter-matched: counts equal the analytic formulas and are within 15% of each other
    assert result.lora.trainable_params == lora_parameter_count(reference, LORA_RANK, MOE.targets)
    assert result.moe.trainable_params == moe_lora_parameter_count(reference, MOE.num_experts, MOE.rank, MOE.targets)
    ratio = result.moe.trainable_params / result.lora.trainable_params
    assert 1.0 <= ratio < 1.15, ratio

    # base weights untouched in both runs; both started from the same base
    assert len(built) == 2
    for model in built:
        _assert_base_untouched(model, reference)

    # the reach step agrees with a naive recomputation from the curves
    target = result.lora.val_curve[-1][1]
    expected = next((s for s, v in result.moe.val_curve if v <= target), None)
    assert result.moe_reaches_lora_final_at == expected

    d = json.loads(json.dumps(result.to_dict()))
    assert d["moe"]["val_curve"] == [[s, v] for s, v in result.moe.val_curve]
    assert d["moe_reaches_lora_final_at"] == expected and d["lora_rank"] == LORA_RANK


def test_first_step_at_or_below():
    curve = ((4, 2.0), (8, 1.5), (12, 1.2), (16, 1.4))
    assert exp1.first_step_at_or_below(curve, 1.5) == 8
    assert exp1.first_step_at_or_below(curve, 1.0) is None
    assert exp1.first_step_at_or_below((), 1.0) is None


@pytest.mark.slow
def test_different_bases_are_rejected(setup):
    train, val, tok = setup
    seeds = iter([0, 1])

    def build():
        return build_tiny_llama(BASE.model_copy(update={"seed": next(seeds)}), tok)

    with pytest.raises(ValueError, match="different weights"):
        exp1.run_experiment1(build, tok, train.head(8), val.head(4),
                             SFTSettings(max_steps=1, eval_steps=1, batch_size=8, max_length=48), MOE)


class _Loaded(Exception):
    """Raised by the recorder once both arms' bases are built (the loader path is what is tested)."""


def _profile_yaml(tmp_path, base: dict):
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    raw["name"] = "exp1load"
    raw["data"]["domains"] = ["chat"]
    raw["data"]["sources"] = {"chat": [{"kind": "generated", "generator": "chat", "rows": 60}]}
    raw["data"]["max_rows_per_domain"] = 60
    raw["base"] = base
    raw["training"]["domains"] = ["chat"]
    raw["experiment1"] = {"domain": "chat", "lora_rank": 4}
    path = tmp_path / f"{base['kind']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_experiment1_loads_the_base_exactly_as_training(tmp_path, monkeypatch):
    """Tiny base with load_in_4bit, then a pinned hub snapshot in an offline HF cache: both arms get NF4 bases."""
    import shutil

    import bitsandbytes as bnb
    import huggingface_hub

    from brainstacks_core.data.pipeline import prepare_all
    from brainstacks_core.profile import load_profile
    from brainstacks_core.training import experiment1, run

    built = []

    def record(build_model, tokenizer, *args, **kwargs):
        for _ in range(2):
            model = build_model()
            q = model.model.layers[0].self_attn.q_proj
            built.append((type(q), model.config._name_or_path, tokenizer.chat_template is not None))
        raise _Loaded

    monkeypatch.setattr(experiment1, "run_experiment1", record)
    tiny = {"kind": "tiny", "load_in_4bit": True,
            "tiny": {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "pretrain_steps": 2, "pretrain_batch_size": 4, "seq_len": 32}}
    profile = load_profile(_profile_yaml(tmp_path, tiny), artifact_root=tmp_path / "artifacts")
    prepare_all(profile.context, profile.data)
    with pytest.raises(_Loaded):
        run.run_experiment1_for_profile(profile.training_setup)
    assert [b[0] for b in built] == [bnb.nn.Linear4bit] * 2 and all(b[2] for b in built)
    info = run.ensure_base(profile.training_setup, run.load_domain_data(profile.context, ["chat"]))

    # the same base as a pinned hub snapshot in the (offline) HF cache
    sha = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hf-cache"
    shutil.copytree(info.path, cache / "models--brainstacks-test--tiny" / "snapshots" / sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    hub = {"kind": "hub", "hub": {"repo_id": "brainstacks-test/tiny", "revision": sha, "load_in_4bit": True}}
    hub_profile = load_profile(_profile_yaml(tmp_path, hub), artifact_root=tmp_path / "artifacts")
    built.clear()
    with pytest.raises(_Loaded):
        run.run_experiment1_for_profile(hub_profile.training_setup)
    assert [b[0] for b in built] == [bnb.nn.Linear4bit] * 2
    # only the pinned revision's snapshot exists (no refs/main): loading it offline proves the revision was used
    assert all(b[1] == "brainstacks-test/tiny" for b in built), built
