"""Routing costs against baselines measured in the same process (issue 10 targets; no asserts on time).

(a) Oracle throughput, (pair, combination) losses per second: :func:`discover` as the
    pipeline runs it (per-row stack weights, ``oracle_batch_size`` rows of mixed
    combinations per forward) vs the SAME requests computed one combination per
    forward (rows grouped by combination over the whole run, the baseline's best
    case, batched up to the same size) and vs one (pair, combination) per forward.
    Every arm goes through :func:`~brainstacks_core.routing.pair_loss.weighted_row_losses`.
    Target: per-row >= 3x one-combination-per-forward.
(b) Router time per prompt vs one base forward (``bench_router.router_vs_base``):
    the network alone on its features (target <= 5%), and with its feature forward.
(c) Routed forward, 2 of 10 stacks attached and active (what the stack store leaves
    attached) vs the bare base forward, and vs 10 of 10 attached and active; beside
    it, 10 attached with 2 active (the others skipped).
(d) Stack load through :class:`~brainstacks_core.routing.stack_store.StackStore`:
    cold (the file is sha256-verified against the manifest, then attached) and warm
    (evicted, re-loaded: the same file version is not hashed again) vs a raw read of
    the file (``bench_stack_load``'s bf16 stack).

Shapes: Llama hidden 256, 2 layers, vocab 2048, 10 stacks (5 domains x 2) at two stack
sizes (:data:`SIZES`: the Gemma-3-12B stack/base proportion and the demo's), fp32 on the
CPU, one torch thread by default (``--threads``); (d) hidden 1024 x 8 layers, bf16 file.
Runs in ~30-60 s.

Run: ``.venv/bin/python benchmarks/bench_routing.py``
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench_router import router_flops, router_vs_base  # noqa: E402
from bench_stack_load import build_stack_file, stack_model  # noqa: E402

DOMAINS = ["chat", "code", "math", "medical", "reasoning"]
WORDS = {d: [f"{d}{i}" for i in range(40)] for d in DOMAINS}
HIDDEN, LAYERS, VOCAB, INTER = 256, 2, 2048, 688
# Two sizes of stack relative to the base. At Gemma-3-12B one stack adds E*r = 64 rank per projection to a
# 3840-wide base (10 stacks: 640 / 3840 = 17% of the projections' MACs); E=2, r=2 on this 256-wide base keeps
# that proportion (40 / 256 = 16%). The demo profile's E=4, r=16 on a 64-wide base is the other extreme: there
# the stacks cost several times the base (here 640 / 256).
SIZES = {"Gemma-3-12B proportion (E=2, r=2)": (2, 2), "demo proportion (E=4, r=16)": (4, 16)}


def _interleaved(arms: dict, reps: int) -> dict[str, float]:
    """Median seconds per arm, the arms run in alternating order (the machine's load hits all alike)."""
    times = {k: [] for k in arms}
    for fn in arms.values():
        fn()
    for i in range(reps):
        for name, fn in (list(arms.items()) if i % 2 == 0 else list(reversed(arms.items()))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def build_tokenizer():
    from brainstacks_core.base.tiny_base import train_tokenizer

    rnd = random.Random(0)
    return train_tokenizer([" ".join(rnd.choices(WORDS[d], k=30)) for d in DOMAINS for _ in range(40)],
                           vocab_size=VOCAB)


def build_base(tok):
    from brainstacks_core.base.config import TinyBaseConfig
    from brainstacks_core.base.tiny_base import build_tiny_llama

    return build_tiny_llama(TinyBaseConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                                           num_hidden_layers=LAYERS, num_attention_heads=8, num_key_value_heads=4),
                            tok)


def build_stacked(tok, tmp: Path, experts: int, rank: int):
    """The base with 10 random frozen stacks (2 per domain), each also saved to a file under ``tmp``."""
    from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, inject_stacks, stacked_layers
    from brainstacks_core.stacks.moe_lora import MoELoRAConfig
    from brainstacks_core.stacks.stack_io import save_stack

    moe = MoELoRAConfig(num_experts=experts, rank=rank, alpha=2.0 * rank, top_k=min(2, experts))
    model = build_base(tok)
    inject_stacks(model, moe)
    g = torch.Generator().manual_seed(1)
    stacks, files = {}, {}
    for i, d in enumerate(d for d in DOMAINS for _ in range(2)):
        sid = f"{d}-r{len(stacks.get(d, [])) + 1}"
        add_active_stack(model, sid, seed=i)
        with torch.no_grad():
            for layer in stacked_layers(model).values():
                layer.active.lora_B.copy_(torch.randn(layer.active.lora_B.shape, generator=g) * 0.3 / rank ** 0.5)
        freeze_active_stack(model)
        stacks.setdefault(d, []).append(sid)
        files[sid] = save_stack(tmp / f"{sid}-{experts}x{rank}.safetensors", model, sid, domain=d, round_index=1,
                                base_fingerprint="fp")
    return model.eval(), moe, stacks, files


def pairs_frame(n: int, length: int = 1) -> pd.DataFrame:
    """``n`` (prompt, response) pairs of domain words; ``length`` multiplies their word counts."""
    rnd = random.Random(1)
    rows = []
    for i in range(n):
        d = DOMAINS[i % len(DOMAINS)]
        rows.append({"record_id": f"r{i}", "source_domain": d,
                     "prompt": " ".join(rnd.choices(WORDS[d], k=length * rnd.randint(6, 20))),
                     "response": " ".join(rnd.choices(WORDS[d], k=length * rnd.randint(6, 16)))})
    return pd.DataFrame(rows)


ORACLE_ARMS = ("per-row weights, mixed combinations", "one combination per forward",
               "one (pair, combination) per forward")


def oracle_arms(tok, model, stacks, pairs: pd.DataFrame, cfg, arms=ORACLE_ARMS, sync=lambda: None) -> dict:
    """The real oracle search under each arm of :data:`ORACLE_ARMS`; only how requests are batched differs.

    Args:
        tok, model: the tokenizer and the model with every stack of ``stacks`` attached.
        stacks: ``{domain: [stack_id, ...]}``.
        pairs: :func:`pairs_frame` rows.
        cfg: a ``RouterConfig`` (``max_length``, ``oracle_batch_size``; ``exhaustive_sample=0``).
        arms: which arms to run (the first is the reference).
        sync: called before each clock read (``torch.cuda.synchronize`` on a GPU).

    Returns:
        ``{arm: (seconds, OracleResult)}``.
    """
    import brainstacks_core.routing.oracle as oracle
    from brainstacks_core.routing.pair_loss import PairLosses

    class OneCombinationPerForward(PairLosses):
        """Every ``ensure`` of the search computed one combination at a time (forwards never mix them)."""

        def ensure(self, requests):
            groups: dict = {}
            for i, c in requests:
                groups.setdefault(frozenset(c), []).append((i, c))
            for reqs in groups.values():
                super().ensure(reqs)

    versions = {s: f"v-{s}" for ids in stacks.values() for s in ids}
    setup = {ORACLE_ARMS[0]: (cfg, PairLosses), ORACLE_ARMS[1]: (cfg, OneCombinationPerForward),
             ORACLE_ARMS[2]: (cfg.model_copy(update={"oracle_batch_size": 1}), PairLosses)}
    out = {}
    try:
        for name in arms:
            c, cls = setup[name]
            oracle.PairLosses = cls
            sync()
            t0 = time.perf_counter()
            res = oracle.discover(model, tok, pairs, stacks, versions, "fp", c, None, domains=list(stacks),
                                  progress=False)
            sync()
            out[name] = (time.perf_counter() - t0, res)
    finally:
        oracle.PairLosses = PairLosses
    return out


def bench_oracle(tok, model, stacks, label: str) -> None:
    """The real oracle search three ways (:func:`oracle_arms`), printed."""
    from brainstacks_core.routing.config import RouterConfig

    pairs = pairs_frame(10)
    cfg = RouterConfig(max_length=48, oracle_batch_size=16, exhaustive_sample=0)
    out = oracle_arms(tok, model, stacks, pairs, cfg)
    t_row, ref = out[ORACLE_ARMS[0]]
    print(f"(a) oracle, {label}: {len(pairs)} pairs, {ref.computed} (pair, combination) losses, "
          f"{ref.losses['combo'].nunique()} combinations, batch {cfg.oracle_batch_size}")
    for name, (t, res) in out.items():
        diff = float((res.targets["oracle_loss"] - ref.targets["oracle_loss"]).abs().max())
        same = list(res.targets["combo"]) == list(ref.targets["combo"])
        print(f"    {name:<38} {res.forwards:4d} forwards {t:7.2f} s {res.computed / t:7.1f} rows/s"
              f"  per-row speed-up {t / t_row:5.2f}x  (same combos: {same}, max |loss diff| {diff:.1e})")
    print("    target: per-row >= 3x one-combination-per-forward")


def bench_router(base) -> None:
    b, t = 16, 128
    t_base, rows = router_vs_base(base, HIDDEN, len(DOMAINS), b, t, VOCAB, widths=((512, 8), (64, 4)))
    print(f"(b) router per prompt vs one base forward (B={b}, T={t}, D={len(DOMAINS)}; base "
          f"{1e3 * t_base / b:.2f} ms/prompt; target <= 5%):")
    for r in rows:
        print(f"    network width {r['width']:3d} ({r['params'] / 1e6:.2f}M params) {1e3 * r['seconds'] / b:7.2f} "
              f"ms/prompt = {100 * r['seconds'] / t_base:5.1f}% of a base forward; with its own feature forward "
              f"{100 * (r['seconds'] + t_base) / t_base:.0f}%")
    gemma, base_f = router_flops(3840, 256, 10, 512), 2.0 * 11.8e9 * 256
    print(f"    Gemma-3-12B shapes (T=256, D=10, width 512), FLOPs: network {100 * gemma / base_f:.3f}% of a base "
          f"forward (bench_router.py)")


@torch.no_grad()
def bench_forward(base, model, moe, stacks, files, label: str) -> None:
    import copy

    from brainstacks_core.routing.stack_store import StackEntry, StackStore
    from brainstacks_core.stacks.inject import inject_stacks, row_weights

    b, t = 8, 128
    ids = torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(0))
    all_ids = [s for d in DOMAINS for s in stacks[d]]
    two = stacks["chat"][:1] + stacks["math"][:1]
    two_model = copy.deepcopy(base)
    inject_stacks(two_model, moe)
    store = StackStore(two_model, {s: StackEntry(s, s.split("-")[0], files[s].path, files[s].file_sha256)
                                   for s in all_ids})
    store.ensure(two)  # what routed inference leaves attached for a chat + math batch
    w2, w10 = torch.rand(b, 2) + 0.2, torch.rand(b, 10) + 0.2

    def under(m, sids, w):
        def run():
            with row_weights(m, sids, w):
                m(input_ids=ids, use_cache=False)
        return run

    med = _interleaved({"base forward (no stack layers)": lambda: base(input_ids=ids, use_cache=False),
                        "2 of 10 attached, 2 active": under(two_model, two, w2),
                        "10 attached, 2 active (8 skipped)": under(model, two, w2),
                        "10 of 10 attached and active": under(model, all_ids, w10)}, reps=7)
    t_base, t_10 = med["base forward (no stack layers)"], med["10 of 10 attached and active"]
    print(f"(c) routed forward, {label} (B={b}, T={t}, median of 7):")
    for name, sec in med.items():
        print(f"    {name:<36} {1e3 * sec:8.1f} ms  x base {sec / t_base:5.2f}  x 10-of-10 {sec / t_10:5.2f}")


def bench_load(tmp: Path) -> None:
    from brainstacks_core.routing.stack_store import StackEntry, StackStore
    from brainstacks_core.stacks.stack_io import load_stack

    hidden, layers = 1024, 8
    path = build_stack_file(tmp, hidden, layers)
    sha = load_stack(path).file_sha256
    model = stack_model(hidden, layers)
    entry = {"s": StackEntry("s", "d", path, sha)}
    warm = StackStore(model, entry, base_fingerprint="fp")
    warm.ensure(["s"])  # this file version is now verified; the next loads of it are not hashed
    warm.evict("s")
    names = ("raw read", "store, cold: read + sha256 + parse", "store, warm: read + parse (same version)")
    load = {k: [] for k in names}
    attach: list[float] = []
    for i in range(7):
        cold = StackStore(model, entry, base_fingerprint="fp")  # nothing verified yet

        def raw():
            t0 = time.perf_counter()
            path.read_bytes()
            load[names[0]].append(time.perf_counter() - t0)

        def via(store, name):
            def run():
                before, att = store.stats.load_seconds, store.stats.attach_seconds
                store.ensure(["s"])
                load[name].append(store.stats.load_seconds - before)
                attach.append(store.stats.attach_seconds - att)
                store.evict("s")
            return run

        arms = [raw, via(cold, names[1]), via(warm, names[2])]
        for fn in (arms if i % 2 == 0 else arms[::-1]):
            fn()
    med = {k: statistics.median(v[1:]) for k, v in load.items()}  # the first round warms the page cache
    t_raw = med[names[0]]
    print(f"(d) stack load, {path.stat().st_size / 1e6:.1f} MB bf16 file (hidden {hidden}, {layers} layers), "
          f"median of 6, page cache warm:")
    for name, sec in med.items():
        print(f"    {name:<44} {1e3 * sec:8.2f} ms  x raw {sec / t_raw:6.2f}")
    print(f"    attach into the model's banks (both store arms)  {1e3 * statistics.median(attach):8.2f} ms "
          f"(allocation of {warm.stats.peak_bytes / 1e6:.1f} MB)")
    print(f"    warm store: {warm.summary()}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared box, 2-thread OpenMP regions wait on "
                             "descheduled threads; an attach measured 1.3 s with 2 threads vs 9 ms with 1 at load 6)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    print(f"shapes: Llama hidden {HIDDEN}, {LAYERS} layers, vocab {VOCAB}; 10 stacks over {len(DOMAINS)} domains; "
          f"fp32, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = build_tokenizer()
        base = build_base(tok)
        for label, (e, r) in SIZES.items():
            model, moe, stacks, files = build_stacked(tok, tmp, e, r)
            bench_oracle(tok, model, stacks, label)
            bench_forward(base, model, moe, stacks, files, label)
        bench_router(base)
        bench_load(tmp)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
