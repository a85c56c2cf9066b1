"""Stack load time vs a raw read of the same file plus one hash pass (target <= 1.2x), and a warm LRU hit.

Run: ``.venv/bin/python benchmarks/bench_stack_load.py [--hidden 2048] [--layers 22] [--repeats 5]`` (TinyLlama-1.1B shapes)

Builds a random-init Llama, trains nothing: one frozen stack with random B is
saved with :func:`save_stack`, then, interleaved and with a warm page cache:

* ``raw read``: ``Path.read_bytes()`` of the file;
* ``raw read + blake3`` / ``raw read + sha256``: the floor of any verified load (one read, one hash pass);
* ``load (expected blake3)``: :func:`load_stack` with the BLAKE3 recorded at save (what the stack store does:
  one read into one buffer, one multi-threaded BLAKE3 pass, tensors as views, no copy);
* ``load (expected sha256)``: the same with the catalog's sha256 (manifests from before BLAKE3 was recorded);
* ``load (verify tensors)``: no expected digest (file hash + tensor checksum);
* ``store: warm LRU hit``: ``StackStore.ensure`` of an attached stack (no file access).

Targets: ``load (expected blake3)`` / ``raw read + blake3`` <= 1.2; a warm hit <= 1 ms.
Prints median seconds and the ratios. No timed asserts.
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
    parser.add_argument("--hidden", type=int, default=2048, help="TinyLlama-1.1B width (default)")
    parser.add_argument("--layers", type=int, default=22, help="TinyLlama-1.1B depth (default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from brainstacks_core.stacks.stack_io import load_stack

    import hashlib

    from brainstacks_core.files import blake3_bytes
    from brainstacks_core.routing.stack_store import StackEntry, StackStore

    with tempfile.TemporaryDirectory() as tmp:
        path = build_stack_file(Path(tmp), args.hidden, args.layers)
        first = load_stack(path)
        sha, b3 = first.file_sha256, blake3_bytes(path.read_bytes())
        arms = {"raw read": lambda: path.read_bytes(),
                "raw read + blake3": lambda: blake3_bytes(path.read_bytes()),
                "raw read + sha256": lambda: hashlib.sha256(path.read_bytes()).digest(),
                "load (expected blake3)": lambda: load_stack(path, expected_sha256=sha, expected_blake3=b3),
                "load (expected sha256)": lambda: load_stack(path, expected_sha256=sha),
                "load (verify tensors)": lambda: load_stack(path)}
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
        model = stack_model(args.hidden, args.layers)
        store = StackStore(model, {"s": StackEntry("s", "d", path, sha, "v", b3)})
        store.ensure(["s"])  # the cold load into the store
        hits = []
        for _ in range(max(50, args.repeats)):
            t0 = time.perf_counter()
            store.ensure(["s"])
            hits.append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    raw = med["raw read"]
    print(f"stack file: {size / 1e6:.1f} MB (hidden {args.hidden}, {args.layers} layers, bf16), "
          f"median of {args.repeats}; torch threads {torch.get_num_threads()}")
    print(f"{'arm':<26} {'seconds':>9} {'x raw':>7}")
    for name, m in med.items():
        print(f"{name:<26} {m:>9.4f} {m / raw:>7.2f}")
    cold = med["load (expected blake3)"] / med["raw read + blake3"]
    print(f"cold load / (raw read + one BLAKE3 pass) = {cold:.2f} (target <= 1.2)")
    print(f"cold load (sha256) / (raw read + one sha256 pass) = "
          f"{med['load (expected sha256)'] / med['raw read + sha256']:.2f}")
    print(f"warm LRU hit: {1e3 * statistics.median(hits):.3f} ms (target <= 1 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
