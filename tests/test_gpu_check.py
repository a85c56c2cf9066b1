"""benchmarks/gpu_check.py --dry-run: every section runs on the CPU through the GPU check's own code.

The script is what a GPU worker runs (README: GPU worker); the dry run keeps it from rotting: it
must print one JSON with every section's figures, no section may fail, every number is finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

EXPECTED = {
    "memory": {"base", "frozen_stacks", "active_stack_and_basis", "frozen_moved_to_host", "host_frozen_bank",
               "host_stack_side"},
    "sft": {"s_per_step", "tokens_per_s", "peak_memory", "host_syncs", "train_loss"},
    "moe_vs_peft": {"moe_lora_s", "peft_lora_r64_s", "moe_over_peft"},
    "null_space": {"seconds", "peak_memory", "directions_per_layer_min"},
    "oracle": {"per_row_rows_per_s", "one_combination_rows_per_s", "per_row_speedup", "same_combinations",
               "peak_memory"},
    "hflm": {"base_items_per_s", "ungated_items_per_s", "routed_items_per_s", "routed_over_base",
             "peak_memory_base_mode"},
    "features": {"prompts_per_s", "host_bytes_per_prompt", "peak_memory"},
    "loss": {"cpu_fp32", "device_bf16", "bf16_vs_fp32_rel_diff"},
    "gemma": {"base_2_layers", "base_layers_x_full", "frozen_x_full", "sft"},
}


def _numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_prints_every_section_with_finite_figures():
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["errors"] == [], {n: report["sections"][n] for n in report["errors"]}
    assert set(report["sections"]) == set(EXPECTED)
    for name, keys in EXPECTED.items():
        missing = keys - set(report["sections"][name])
        assert not missing, f"section {name} lacks {missing}"
    numbers = list(_numbers(report))
    assert len(numbers) > 80
    bad = [(p, v) for p, v in numbers if not math.isfinite(v)]
    assert not bad, f"non-finite figures: {bad}"
    # targets sit beside the figures the issue gives them for
    s = report["sections"]
    assert s["oracle"]["per_row_speedup"]["target"] == ">= 3"
    assert s["hflm"]["routed_over_base"]["target"] == ">= 0.8"
    assert s["moe_vs_peft"]["moe_over_peft"]["target"] == "<= 1.1"
    # measured against the memory model: the exact parts agree on the CPU too
    assert s["memory"]["frozen_stacks"]["ratio"] == pytest.approx(1.0)
    assert s["memory"]["base"]["ratio"] == pytest.approx(1.0, rel=0.02)
    assert s["gemma"]["frozen_x_full"]["ratio"] == pytest.approx(1.0)
    syncs = s["sft"]["host_syncs"]
    assert syncs["per_step"] > 0 and syncs["per_step_by_origin"]  # trl's per-step .item() calls are seen


def test_only_runs_a_subset_and_rejects_unknown_sections():
    proc = _run("--dry-run", "--only", "memory,nope")
    assert proc.returncode != 0 and "unknown section(s) ['nope']" in proc.stderr
    proc = _run("--dry-run", "--only", "memory")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert list(json.loads(proc.stdout)["sections"]) == ["memory"]


def test_memory_model_training_logits_are_trl_fused_head_not_full_vocabulary():
    from memory_model import GEMMA, TINYLLAMA, Run, breakdown, peaks

    run = Run()
    gemma = breakdown(GEMMA, run)
    assert gemma["train_logits_full"] == pytest.approx(4 * 512 * 262144 * 10)  # bf16 + fp32 + fp32 grad: 5.4 GB
    assert gemma["train_logits"] < 0.3e9  # one 4096 x 32768 bf16 tile + per-token stats, as trl 1.16 computes
    assert gemma["hflm_forward"] > 8 * 2048 * 262144 * 4  # HFLM's full batch logits + log_softmax
    for shapes in (TINYLLAMA, GEMMA):
        on_gpu, on_host = peaks(shapes, run), peaks(shapes, Run(frozen_on_host=True))
        frozen = breakdown(shapes, run)["frozen"]
        assert on_gpu["training"] - on_host["training"] == pytest.approx(frozen)
        assert on_host["host"] - on_gpu["host"] == pytest.approx(frozen)
