"""CPU benchmark: MoE-LoRA stacks vs the PEFT single-LoRA baseline, and batched vs looped frozen stacks.

Run: ``.venv/bin/python benchmarks/bench_moe_lora.py [--quick | --shapes smollm2] [--repeats N] [--out results.json]``

Cases (A / B, median over interleaved repeats in one process, after warm-up):

* ``train_step``: forward + backward + AdamW step of one active MoE-LoRA stack
  (E experts x rank r, top-k, all seven projections, load-balance loss x 0.01)
  / PEFT LoRA of rank E*r (rsLoRA, same projections).
* ``forward_active``: inference forward with one trained active stack (the single-domain routed
  path) / PEFT LoRA of rank E*r (target 1.2; the issue measured 1.60 at SmolLM2 shapes).
* ``forward_8_frozen``: inference forward (eval, no_grad) with S frozen stacks
  / one PEFT LoRA of the same total rank S*E*r.
* ``frozen_loop_vs_batched``: the same S-stack forward with ``frozen_mode="loop"``
  (one stack at a time) / ``"batched"`` (all stacks in one pass).

Each repeat runs both arms, alternating which goes first, so slow drift (thermal,
other processes) hits both equally. ``torch.set_num_threads`` is left at its default.
Memory (``--memory``): peak RSS growth of one step, each arm in a fresh spawned
process (``/proc/self/clear_refs`` resets the high-water mark; Linux only).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class BenchConfig:
    """Model and adapter sizes.

    Attributes:
        hidden: Llama hidden size.
        intermediate: MLP width.
        layers: decoder layers.
        heads: attention heads.
        kv_heads: key/value heads (None: equal to heads).
        vocab: vocabulary size.
        seq: tokens per sequence.
        batch: sequences per step.
        experts: E, experts per MoE-LoRA projection.
        rank: r, rank of each expert.
        top_k: experts mixed per token.
        frozen_stacks: S, frozen stacks in the inference cases.
        aux_coef: load-balance loss coefficient in the train step.
        repeats: timed repeats per arm.
        warmup: untimed runs per arm before timing.
    """

    hidden: int = 512
    intermediate: int = 1376
    layers: int = 4
    heads: int = 8
    kv_heads: int | None = None
    vocab: int = 4096
    seq: int = 256
    batch: int = 4
    experts: int = 4
    rank: int = 16
    top_k: int = 2
    frozen_stacks: int = 8
    aux_coef: float = 0.01
    repeats: int = 10
    warmup: int = 2


QUICK = dict(hidden=128, intermediate=344, layers=2, heads=4, vocab=512, seq=64, batch=2, repeats=3, warmup=1)
# SmolLM2-135M's decoder (30 layers, 210 wrapped projections) at the batch the issue measured (2 x 128).
SMOLLM2 = dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152, seq=128, batch=2,
               repeats=6, warmup=1)
SHAPES = {"default": {}, "quick": QUICK, "smollm2": SMOLLM2}
TARGETS = {"train_step": 1.1, "forward_active": 1.2, "forward_8_frozen": 1.3, "frozen_loop_vs_batched": None}


# ------------------------------------------------------------------------------------------ models
def build_base(cfg: BenchConfig) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lcfg = LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads or cfg.heads,
                       max_position_embeddings=max(cfg.seq, 128))
    return LlamaForCausalLM(lcfg).float()


def moe_config(cfg: BenchConfig):
    from brainstacks_core.stacks.moe_lora import MoELoRAConfig

    return MoELoRAConfig(num_experts=cfg.experts, rank=cfg.rank, top_k=cfg.top_k, aux_loss_coef=cfg.aux_coef)


def moe_trainable(base: torch.nn.Module, cfg: BenchConfig) -> torch.nn.Module:
    from brainstacks_core.stacks.inject import add_active_stack, inject_stacks

    model = copy.deepcopy(base)
    inject_stacks(model, moe_config(cfg))
    add_active_stack(model, "active", seed=1)
    return model.train()


def moe_frozen(base: torch.nn.Module, cfg: BenchConfig) -> torch.nn.Module:
    """``cfg.frozen_stacks`` frozen stacks with random B, no active stack."""
    from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, inject_stacks, stacked_layers

    model = copy.deepcopy(base)
    inject_stacks(model, moe_config(cfg))
    for s in range(cfg.frozen_stacks):
        add_active_stack(model, f"s{s}", seed=100 + s)
        with torch.no_grad():
            for layer in stacked_layers(model).values():
                layer.active.lora_B.normal_(std=0.02)
        freeze_active_stack(model)
    return model.eval()


def peft_model(base: torch.nn.Module, rank: int, train: bool) -> torch.nn.Module:
    from brainstacks_core.base.baseline import wrap_single_lora

    model = wrap_single_lora(copy.deepcopy(base), rank=rank, alpha=16.0)
    return model.train() if train else model.eval()


def set_frozen_mode(model: torch.nn.Module, mode: str) -> None:
    from brainstacks_core.stacks.inject import stacked_layers

    for layer in stacked_layers(model).values():
        layer.frozen_mode = mode


# ------------------------------------------------------------------------------------------- steps
def make_train_step(model: torch.nn.Module, ids: torch.Tensor, aux_coef: float | None) -> Callable[[], None]:
    """Forward + backward + AdamW step; ``aux_coef`` adds the MoE load-balance loss."""
    from brainstacks_core.stacks.inject import collect_aux_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        if aux_coef is not None:
            aux = collect_aux_loss(model)
            assert aux is not None, "MoE model produced no aux loss"
            loss = loss + aux_coef * aux
        loss.backward()
        opt.step()

    return step


def make_forward(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def fwd() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    return fwd


def time_interleaved(fn_a: Callable[[], None], fn_b: Callable[[], None], repeats: int,
                     warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per call of A and B; repeat i runs A first when i is even, B first when odd."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb = [], []
    for i in range(repeats):
        order = ((fn_a, ta), (fn_b, tb)) if i % 2 == 0 else ((fn_b, tb), (fn_a, ta))
        for fn, out in order:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ta, tb


# ------------------------------------------------------------------------------------------ memory
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _memory_child(case: str, arm: str, cfg_dict: dict, queue) -> None:
    """In a fresh process: build one arm, reset the RSS high-water mark, run 2 calls, report growth."""
    try:
        cfg = BenchConfig(**cfg_dict)
        fn = build_case(case, cfg)[0 if arm == "A" else 1]
        fn()  # first call allocates optimizer state / caches; not what we measure
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS")
        fn()
        fn()
        queue.put((_rss_kib("VmHWM") - before) / 1024)
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        queue.put(f"error: {err}")


def measure_memory(case: str, cfg: BenchConfig) -> tuple[float | str, float | str]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = []
    for arm in ("A", "B"):
        q = ctx.Queue()
        p = ctx.Process(target=_memory_child, args=(case, arm, asdict(cfg), q))
        p.start()
        out.append(q.get())
        p.join()
    return out[0], out[1]


# ------------------------------------------------------------------------------------------- cases
def build_case(case: str, cfg: BenchConfig) -> tuple[Callable[[], None], Callable[[], None]]:
    base = build_base(cfg)
    ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), generator=torch.Generator().manual_seed(0))
    if case == "train_step":
        return (make_train_step(moe_trainable(base, cfg), ids, cfg.aux_coef),
                make_train_step(peft_model(base, cfg.experts * cfg.rank, train=True), ids, None))
    if case == "forward_active":  # one trained active stack, inference: the routed single-domain path
        moe = moe_trainable(base, cfg).eval()
        from brainstacks_core.stacks.inject import stacked_layers

        with torch.no_grad():
            for layer in stacked_layers(moe).values():
                layer.active.lora_B.normal_(std=0.02)
        return make_forward(moe, ids), make_forward(peft_model(base, cfg.experts * cfg.rank, False), ids)
    if case == "forward_8_frozen":
        total_rank = cfg.frozen_stacks * cfg.experts * cfg.rank
        return make_forward(moe_frozen(base, cfg), ids), make_forward(peft_model(base, total_rank, False), ids)
    if case == "frozen_loop_vs_batched":
        looped, batched = moe_frozen(base, cfg), None
        batched = copy.deepcopy(looped)
        set_frozen_mode(looped, "loop")
        set_frozen_mode(batched, "batched")
        return make_forward(looped, ids), make_forward(batched, ids)
    raise ValueError(case)


ARMS = {
    "train_step": ("MoE-LoRA {experts}x r{rank} top-{top_k} train", "PEFT LoRA r{lora_rank} train"),
    "forward_active": ("MoE-LoRA {experts}x r{rank} active fwd", "PEFT LoRA r{lora_rank} fwd"),
    "forward_8_frozen": ("{frozen_stacks} frozen stacks fwd", "PEFT LoRA r{total_rank} fwd"),
    "frozen_loop_vs_batched": ("{frozen_stacks} stacks loop fwd", "{frozen_stacks} stacks batched fwd"),
}


def profile_train_step(cfg: BenchConfig, rows: int = 25) -> str:
    """Top ops (self CPU time) of a few MoE-LoRA train steps."""
    from torch.profiler import ProfilerActivity, profile

    step, _ = build_case("train_step", cfg)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config (2 layers, hidden 128, seq 64) for a smoke run")
    parser.add_argument("--shapes", choices=list(SHAPES), default="default",
                        help="model shapes: default (hidden 512, 4 layers), quick, or smollm2 (SmolLM2-135M: 30 "
                             "layers, 210 projections, batch 2 x 128)")
    parser.add_argument("--repeats", type=int, help="timed repeats per arm (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed runs per arm first (default 2, quick 1)")
    parser.add_argument("--cases", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS growth per arm (spawns processes)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of the MoE train step")
    parser.add_argument("--out", type=Path, help="write results as JSON here")
    args = parser.parse_args(argv)

    cfg = BenchConfig(**(QUICK if args.quick else SHAPES[args.shapes]))
    if args.repeats is not None:
        cfg.repeats = args.repeats
    if args.warmup is not None:
        cfg.warmup = args.warmup
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (default), fp32, CPU")
    print("config: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()))

    names = dict(asdict(cfg), lora_rank=cfg.experts * cfg.rank,
                 total_rank=cfg.frozen_stacks * cfg.experts * cfg.rank)
    results = []
    for case in args.cases:
        fn_a, fn_b = build_case(case, cfg)
        t0 = time.perf_counter()
        ta, tb = time_interleaved(fn_a, fn_b, cfg.repeats, cfg.warmup)
        ma, mb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
        target = TARGETS[case]
        row = dict(case=case, a=ARMS[case][0].format(**names), b=ARMS[case][1].format(**names),
                   median_ms_a=ma, median_ms_b=mb, ratio=ma / mb, target=target,
                   passed=None if target is None else ma / mb <= target,
                   times_ms_a=[t * 1e3 for t in ta], times_ms_b=[t * 1e3 for t in tb])
        if args.memory:
            row["peak_rss_growth_mib_a"], row["peak_rss_growth_mib_b"] = measure_memory(case, cfg)
        results.append(row)
        print(f"  {case}: done in {time.perf_counter() - t0:.1f} s", flush=True)
        del fn_a, fn_b

    print()
    head = f"{'case':<24} {'A':<34} {'B':<26} {'A ms':>9} {'B ms':>9} {'A/B':>6} {'target':>7} {'result':>6}"
    print(head)
    print("-" * len(head))
    for r in results:
        target = "-" if r["target"] is None else f"<={r['target']:.2f}"
        verdict = "info" if r["passed"] is None else ("PASS" if r["passed"] else "FAIL")
        print(f"{r['case']:<24} {r['a']:<34} {r['b']:<26} {r['median_ms_a']:>9.1f} {r['median_ms_b']:>9.1f} "
              f"{r['ratio']:>6.2f} {target:>7} {verdict:>6}")
    if args.memory:
        print("\npeak RSS growth over 2 calls after the first (MiB; fresh process per arm):")
        for r in results:
            print(f"  {r['case']:<24} A {r['peak_rss_growth_mib_a']}  B {r['peak_rss_growth_mib_b']}")
    else:
        print("\n(memory not measured: use --memory; CPU peak RSS per arm, each in a fresh process)")

    if args.profile:
        print("\nMoE-LoRA train step, 3 steps, top ops by self CPU time:")
        print(profile_train_step(cfg))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(config=asdict(cfg), threads=torch.get_num_threads(),
                                            torch=torch.__version__, results=results), indent=2))
        print(f"\nwrote {args.out}")
    return 0 if all(r["passed"] is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
