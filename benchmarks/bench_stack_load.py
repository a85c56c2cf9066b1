"""Stack load time vs a raw read of the same file (issue 8, item 8; target <= 1.5x).

Run: ``.venv/bin/python benchmarks/bench_stack_load.py [--hidden 1024] [--layers 8] [--repeats 5]``

Builds a random-init Llama, trains nothing: one frozen stack with random B is
saved with :func:`save_stack`, then, interleaved and with a warm page cache:

* ``raw read``: ``Path.read_bytes()`` of the file;
* ``load (expected sha)``: :func:`load_stack` with the file's known sha256 (one read, one hash);
* ``load (verify tensors)``: :func:`load_stack` without it (one read, file hash + tensor checksum);
* ``load (sha only)``: ``verify=False`` (one read, the file hash is still computed and returned).
* ``sha256 of the bytes``: ``hashlib.sha256`` alone, the floor of any verified load.

On a page-cached file the raw read runs at memory speed (~4.7 GB/s on the
2-core dev box) and sha256 at ~1.3 GB/s, so one hash pass alone is ~3.5x the
read there; from disk the read dominates and the ratio falls towards 1.

Prints median seconds and the ratio to the raw read. No timed asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stack_model(hidden: int, layers: int):
    """The random-init Llama the stack file is made for, with injected bf16 stack layers (no stacks)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from brainstacks_core.stacks.inject import inject_stacks
    from brainstacks_core.stacks.moe_lora import MoELoRAConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8)
    model = LlamaForCausalLM(cfg)
    inject_stacks(model, MoELoRAConfig(frozen_dtype="bfloat16"))
    return model


def build_stack_file(directory: Path, hidden: int, layers: int) -> Path:
    from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, stacked_layers
    from brainstacks_core.stacks.stack_io import save_stack

    model = stack_model(hidden, layers)
    add_active_stack(model, "s", seed=0)
    with torch.no_grad():
        for layer in stacked_layers(model).values():
            layer.active.lora_B.normal_(std=0.02)
    freeze_active_stack(model)
    path = directory / "s.safetensors"
    save_stack(path, model, "s", domain="d", round_index=1, base_fingerprint="fp")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from brainstacks_core.stacks.stack_io import load_stack

    with tempfile.TemporaryDirectory() as tmp:
        path = build_stack_file(Path(tmp), args.hidden, args.layers)
        sha = load_stack(path).file_sha256
        arms = {"raw read": lambda: path.read_bytes(),
                "load (expected sha)": lambda: load_stack(path, expected_sha256=sha),
                "load (verify tensors)": lambda: load_stack(path),
                "load (sha only)": lambda: load_stack(path, verify=False)}
        import hashlib

        data = path.read_bytes()
        arms["sha256 of the bytes"] = lambda: hashlib.sha256(data).digest()
        times: dict[str, list[float]] = {k: [] for k in arms}
        for fn in arms.values():  # warm the page cache and the code paths
            fn()
        for i in range(args.repeats):
            order = list(arms.items()) if i % 2 == 0 else list(reversed(arms.items()))
            for name, fn in order:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        size = path.stat().st_size
    raw = statistics.median(times["raw read"])
    print(f"stack file: {size / 1e6:.1f} MB (hidden {args.hidden}, {args.layers} layers, bf16), "
          f"median of {args.repeats}")
    print(f"{'arm':<24} {'seconds':>9} {'x raw':>7} {'target':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        target = "<=1.50" if name == "load (expected sha)" else "-"
        print(f"{name:<24} {med:>9.4f} {med / raw:>7.2f} {target:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
