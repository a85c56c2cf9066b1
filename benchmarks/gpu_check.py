"""GPU check: the project's real code paths on one GPU at paper shapes, against the memory model (issue 21).

Run on a GPU worker (one GPU, no hub access, <= 8 minutes on an H100)::

    .venv/bin/python benchmarks/gpu_check.py --out gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --only memory,sft        # a subset
    .venv/bin/python benchmarks/gpu_check.py --dry-run                # CPU, tiny shapes, ~1 min (in the tests)

Two random-weight models are written to a temp folder with a tokenizer and loaded through
``brainstacks_core.base.loading.load_base(folder, load_in_4bit=True, ...)``: TinyLlama-1.1B shapes
(hidden 2048, 22 layers, inter 5632, 32/4 heads, vocab 32000) and a 2-layer Gemma-3 at Gemma-3-12B
widths (hidden 3840, inter 15360, 16/8 heads, head_dim 256, vocab 262144). One JSON goes to stdout
(progress to stderr); every section has a hard time budget and fails alone. Sections (``--only``):

``memory``      base, 10 frozen stacks, active stack (+ its null-space basis), frozen stacks moved to
                the host: measured / memory model (benchmarks/memory_model.py).
``sft``         StackSFTTrainer at B=4, T=512, gradient checkpointing, bf16: s/step, tokens/s, peak
                memory / model, host syncs per step (by origin: brainstacks, trl, transformers, ...).
``moe_vs_peft`` step time of one MoE-LoRA stack / PEFT LoRA r64 (bench_moe_lora's steps; target <= 1.1, issue 21).
``null_space``  compute_bases over two earlier domains: seconds, peak / model.
``oracle``      oracle rows/s, per-row weights vs one combination per forward (bench_routing; target >= 3x).
``hflm``        lm-eval HFLM items/s in base, ungated and routed mode (target routed >= 0.8x base).
``features``    router features: prompts/s, peak / model, host bytes per prompt / model.
``loss``        completion loss on the same model and rows: CPU fp32, GPU bf16, GPU NF4.
``gemma``       2-layer Gemma-3: per-layer base and stack bytes x 48 / model; SFT peak / model.

``--dry-run`` runs every section through the same functions on the CPU at tiny shapes (4-bit NF4
through bitsandbytes' CPU kernels, fp32 compute), so the script cannot rot: tests/test_gpu_check.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from gpu_probes import (GB, Clock, MemProbe, SectionTimeout, SyncProbe, figure, free, host_side_bytes,  # noqa: E402
                        model_bytes, ratio, sync, time_budget)
from memory_model import GEMMA, TINYLLAMA, Run, Shapes, breakdown, peaks  # noqa: E402

log = logging.getLogger("gpu_check")
SECTIONS = ("memory", "sft", "moe_vs_peft", "null_space", "oracle", "hflm", "features", "loss", "gemma")


@dataclass(frozen=True)
class Scale:
    """Shapes and sizes of one run (:data:`GPU` or :data:`DRY`)."""

    llama: Shapes
    gemma: Shapes  # the 2-layer model that is built
    gemma_full: Shapes  # what its per-layer bytes are extrapolated to
    batch: int
    seq: int
    tok_vocab: int
    run: Run
    sft_warmup: int = 3
    sft_steps: int = 6
    sync_steps: int = 2
    gemma_sft_steps: int = 3
    peft_repeats: int = 5
    null_batches: int = 8
    oracle_pairs: int = 30
    oracle_length: int = 6
    hflm_questions: int = 40
    hflm_words: int = 120
    feature_prompts: int = 64
    loss_rows: int = 4
    loss_len: int = 256
    budgets: dict = field(default_factory=lambda: {
        "memory": 90, "sft": 120, "moe_vs_peft": 100, "null_space": 90, "oracle": 90, "hflm": 90, "features": 45,
        "loss": 90, "gemma": 150})


GPU = Scale(llama=TINYLLAMA, gemma=GEMMA.with_layers(2), gemma_full=replace(GEMMA, extra_bf16_params=0),
            batch=4, seq=512, tok_vocab=4000, run=Run())
_TINY_L = Shapes("tiny Llama (dry run)", 64, 160, 2, 4, 2, 16, 512, tied=False)
_TINY_G = Shapes("tiny Gemma-3 (dry run)", 64, 128, 2, 4, 2, 32, 2048, tied=True, norms_per_layer=4, qk_norm=True)
DRY = Scale(llama=_TINY_L, gemma=_TINY_G, gemma_full=replace(_TINY_G, layers=6), batch=2, seq=64, tok_vocab=400,
            run=Run(k_per_domain=4, max_rows=64), sft_warmup=1, sft_steps=1, sync_steps=1, gemma_sft_steps=1,
            peft_repeats=2, null_batches=2, oracle_pairs=4, oracle_length=1, hflm_questions=4, hflm_words=12,
            feature_prompts=8, loss_rows=2, loss_len=48,
            budgets={s: 120 for s in SECTIONS})


# ------------------------------------------------------------------------------------------ models
def texts(n: int, words: int, seed: int = 0) -> list[str]:
    """Sentences of the routing benchmark's domain words (one domain per sentence)."""
    from bench_routing import DOMAINS, WORDS

    rnd = random.Random(seed)
    return [" ".join(rnd.choices(WORDS[DOMAINS[i % len(DOMAINS)]], k=words)) for i in range(n)]


def sft_rows(n: int, seq: int, seed: int = 0):
    """Prompt/response rows long enough to fill ``seq`` tokens after truncation."""
    import pandas as pd

    prompts, responses = texts(n, max(4, seq // 4), seed), texts(n, seq, seed + 1)
    return pd.DataFrame({"prompt": prompts, "response": responses, "system": [None] * n})


def write_model(kind: str, s: Shapes, tok, folder: Path, device: torch.device) -> Path:
    """A random-weight Llama or Gemma-3 (text) with ``s``'s shapes, saved with ``tok`` (safetensors)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.inter, num_hidden_layers=s.layers,
                  num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, head_dim=s.head_dim,
                  max_position_embeddings=4096, tie_word_embeddings=s.tied, **ids)
    cfg = Gemma3TextConfig(**common) if kind == "gemma" else LlamaConfig(**common)
    torch.manual_seed(0)
    with torch.device(device):
        model = (Gemma3ForCausalLM if kind == "gemma" else LlamaForCausalLM)(cfg)
    model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    free(device)
    return folder


class Context:
    """What the sections share: device, scale, tokenizer, model folders and the stacked TinyLlama."""

    def __init__(self, scale: Scale, device: torch.device, tmp: Path, quantize: bool) -> None:
        from brainstacks_core.base.tiny_base import train_tokenizer
        from brainstacks_core.stacks.moe_lora import MoELoRAConfig

        self.scale, self.device, self.tmp, self.quantize = scale, device, tmp, quantize
        self.mem, self.sync = MemProbe(device), (lambda: sync(device))
        self.tok = train_tokenizer(texts(400, 40), vocab_size=scale.tok_vocab)
        r = scale.run
        self.moe = MoELoRAConfig(num_experts=r.experts, rank=r.rank, alpha=16.0, top_k=2, frozen_dtype="bfloat16")
        self._folders: dict[str, Path] = {}
        self.stacked = None  # (model, {domain: [stack ids]}, memory figures)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def folder(self, kind: str) -> Path:
        if kind not in self._folders:
            s = self.scale.llama if kind == "llama" else self.scale.gemma
            self._folders[kind] = write_model(kind, s, self.tok, self.tmp / kind, self.device)
        return self._folders[kind]

    def load(self, kind: str, quantize: bool | None = None, device: torch.device | None = None):
        """The base through the project's loader (NF4 unless ``quantize=False``)."""
        from brainstacks_core.base.loading import load_base

        device = device or self.device
        device_map = {"": device.index or 0} if device.type == "cuda" else "cpu"
        q = self.quantize if quantize is None else quantize
        model, _, _ = load_base(self.folder(kind), load_in_4bit=q, device_map=device_map)
        return model

    def run_for(self, s: Shapes, **kw) -> Run:
        """The memory model's settings for this device (the CPU computes in fp32 and scores every position)."""
        kw.setdefault("act_bytes", 2 if self.cuda else 4)
        return replace(self.scale.run, logit_compact=self.cuda, **kw)

    def stacked_llama(self):
        """The TinyLlama-shaped base with 10 frozen bf16 stacks (2 per domain), built once."""
        if self.stacked is None:
            self.stacked = build_stacked(self)
        return self.stacked


def add_frozen_stacks(model, n: int, domains: list[str], seed: int = 100) -> dict[str, list[str]]:
    """``n`` frozen stacks with random non-zero B, ``n / len(domains)`` per domain, in domain order."""
    from brainstacks_core.stacks.inject import add_active_stack, freeze_active_stack, stacked_layers

    per = max(1, n // len(domains))
    stacks: dict[str, list[str]] = {}
    for j in range(n):
        d = domains[min(j // per, len(domains) - 1)]
        sid = f"{d}-r{len(stacks.get(d, [])) + 1}"
        add_active_stack(model, sid, seed=seed + j)
        with torch.no_grad():
            for layer in stacked_layers(model).values():
                layer.active.lora_B.normal_(std=0.3 / layer.active.lora_B.shape[-2] ** 0.5)
        freeze_active_stack(model)
        stacks.setdefault(d, []).append(sid)
    return stacks


def random_bases(model, k: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """Orthonormal ``[min(k, out), out]`` rows per stacked layer (what an active stack trains under)."""
    from brainstacks_core.stacks.inject import stacked_layers

    g = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for name, layer in stacked_layers(model).items():
        o = layer.out_features
        q, _ = torch.linalg.qr(torch.randn(o, min(k, o), generator=g).to(layer.device))
        out[name] = q.T.contiguous()
    return out


# ---------------------------------------------------------------------------------------- sections
def build_stacked(ctx: Context):
    """``memory``: base, + 10 frozen stacks, + active stack and its basis, frozen stacks to the host."""
    from bench_routing import DOMAINS
    from brainstacks_core.stacks.inject import add_active_stack, drop_active_stack, inject_stacks, \
        place_frozen_stacks

    s, r, dev = ctx.scale.llama, ctx.run_for(ctx.scale.llama), ctx.device.type
    model_parts = breakdown(s, r)
    free(ctx.device)
    m0 = ctx.mem.allocated()
    model = ctx.load("llama")
    m1 = ctx.mem.allocated() if ctx.cuda else model_bytes(model, dev)
    inject_stacks(model, ctx.moe)
    stacks = add_frozen_stacks(model, r.stacks, DOMAINS)
    free(ctx.device)
    m2 = ctx.mem.allocated() if ctx.cuda else model_bytes(model, dev)
    bases = random_bases(model, r.k_per_domain * r.earlier_domains)
    add_active_stack(model, "active", bases=bases, seed=1)
    del bases
    free(ctx.device)
    m3 = ctx.mem.allocated() if ctx.cuda else model_bytes(model, dev)
    host = place_frozen_stacks(model, "cpu")
    free(ctx.device)
    m4 = ctx.mem.allocated() if ctx.cuda else model_bytes(model, dev)
    place_frozen_stacks(model, None)  # the pipeline's default: stacks with their layers
    drop_active_stack(model)
    free(ctx.device)
    no_basis = breakdown(s, replace(r, k_per_domain=0))  # the stacks built here carry no basis
    figures = {
        "shapes": s.name, "method": ctx.mem.method,
        "base": ratio(m1 - m0, model_parts["base"]),
        "frozen_stacks": ratio(m2 - m1, model_parts["frozen"]),
        "active_stack_and_basis": ratio(m3 - m2, model_parts["active"] + model_parts["active_basis"]),
        "frozen_moved_to_host": ratio(m3 - m4, model_parts["frozen"]) if ctx.cuda
        else {"skipped": "CPU: the device is the host"},
        "host_frozen_bank": ratio(host, model_parts["frozen"]),
        "host_stack_side": ratio(host_side_bytes(model), no_basis["host_stack_side"]),
    }
    return model, stacks, figures


def section_memory(ctx: Context) -> dict:
    return ctx.stacked_llama()[2]


class _StepProbe:
    """TrainerCallback: clock and peak over the timed steps, host syncs over the last ones."""

    def __init__(self, ctx: Context, warmup: int, timed: int, total: int, syncs: SyncProbe,
                 resident: float) -> None:
        from transformers import TrainerCallback

        probe = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == warmup:
                    ctx.mem.reset_peak()
                    ctx.sync()
                    probe.t0 = time.perf_counter()
                if state.global_step == warmup + timed:
                    ctx.sync()
                    probe.seconds = time.perf_counter() - probe.t0
                    probe.peak = ctx.mem.peak(resident)
                    syncs.start()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == total:
                    syncs.stop()  # before the trainer's end-of-training work

        self.callback, self.t0, self.seconds, self.peak = Callback(), 0.0, float("nan"), float("nan")


def measure_sft(ctx: Context, model, s: Shapes, warmup: int, timed: int, sync_steps: int) -> dict:
    """``StackSFTTrainer`` (trl SFTTrainer + aux loss) on ``model``: s/step, tokens/s, peak, syncs."""
    from brainstacks_core.stacks.inject import add_active_stack, drop_active_stack
    from brainstacks_core.training.config import SFTSettings
    from brainstacks_core.training.sft import StackSFTTrainer, make_sft_config
    from brainstacks_core.training.sft_data import to_sft_dataset, tokenize_for_loss
    from transformers.trainer_utils import IntervalStrategy

    b, t = ctx.scale.batch, ctx.scale.seq
    total = warmup + timed + sync_steps
    rows = sft_rows(b * total, t)
    examples = tokenize_for_loss(ctx.tok, rows.head(b), t)
    tokens = sum(len(ids) for ids, _ in examples)  # per step: every row is cut at T
    labelled = sum(sum(x != -100 for x in lab[1:]) for _, lab in examples) / max(1, sum(len(i) - 1 for i, _ in examples))
    r = ctx.run_for(s, batch=b, seq=t, labelled_fraction=labelled)
    add_active_stack(model, "sft-active", bases=random_bases(model, r.k_per_domain * r.earlier_domains), seed=3)
    settings = SFTSettings(max_steps=total, batch_size=b, max_length=t, gradient_checkpointing=True,
                           eval_steps=10_000, warmup_steps=0, learning_rate=1e-4, lr_scheduler="constant")
    syncs = SyncProbe(ctx.device)
    free(ctx.device)
    resident = model_bytes(model, ctx.device.type)
    probe = _StepProbe(ctx, warmup, timed, total, syncs, resident)
    try:
        with tempfile.TemporaryDirectory(dir=ctx.tmp) as out, contextlib.redirect_stdout(sys.stderr):
            args = make_sft_config(settings, out)
            args.disable_tqdm, args.eval_strategy = True, IntervalStrategy.NO  # steps only, no evaluation
            trainer = StackSFTTrainer(model=model, args=args, train_dataset=to_sft_dataset(rows),
                                      processing_class=ctx.tok, callbacks=[probe.callback],
                                      aux_loss_coef=ctx.moe.aux_loss_coef)
            with syncs.capture():
                train_loss = trainer.train().training_loss
            del trainer
    finally:
        drop_active_stack(model)
        model.eval()
        free(ctx.device)
    step = probe.seconds / timed
    return {"shapes": s.name, "batch": b, "seq": t, "bf16": ctx.cuda, "gradient_checkpointing": True,
            "timed_steps": timed, "s_per_step": figure(step, "s"), "tokens_per_s": figure(tokens / step, "tok/s"),
            "peak_memory": ratio(probe.peak, peaks(s, r)["training"]),
            "host_syncs": syncs.summary(sync_steps), "train_loss": train_loss}


def section_sft(ctx: Context) -> dict:
    model, _, _ = ctx.stacked_llama()
    sc = ctx.scale
    return measure_sft(ctx, model, sc.llama, sc.sft_warmup, sc.sft_steps, sc.sync_steps)


def section_moe_vs_peft(ctx: Context) -> dict:
    """bench_moe_lora's train steps (fwd + bwd + AdamW) at the model's shapes, on two fresh NF4 loads."""
    from bench_moe_lora import TARGETS, make_train_step, time_interleaved
    from brainstacks_core.base.baseline import wrap_single_lora
    from brainstacks_core.stacks.inject import add_active_stack, inject_stacks

    sc, r = ctx.scale, ctx.scale.run
    moe = ctx.load("llama")
    inject_stacks(moe, ctx.moe)
    add_active_stack(moe, "active", seed=1)
    lora = wrap_single_lora(ctx.load("llama"), rank=r.experts * r.rank, alpha=16.0)
    ids = torch.randint(0, len(ctx.tok), (sc.batch, sc.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(ctx.device)

    def timed(step):
        def run():
            with torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.cuda):
                step()
            ctx.sync()
        return run

    arms = []
    for m, aux in ((moe, ctx.moe.aux_loss_coef), (lora, None)):
        m.train()
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        arms.append(timed(make_train_step(m, ids, aux)))
    ta, tb = time_interleaved(arms[0], arms[1], sc.peft_repeats, warmup=1)
    del moe, lora, arms
    free(ctx.device)
    a, b = sorted(ta)[len(ta) // 2], sorted(tb)[len(tb) // 2]
    target = TARGETS["train_step"]
    return {"shapes": sc.llama.name, "batch": sc.batch, "seq": sc.seq, "repeats": sc.peft_repeats,
            "moe_lora_s": a, "peft_lora_r64_s": b,
            "moe_over_peft": figure(a / b, "x", f"<= {target}", a / b <= target)}


def section_null_space(ctx: Context) -> dict:
    """compute_bases over the first two domains' stacks (one reservoir per domain, then SVD, merge)."""
    from brainstacks_core.stacks.config import NullSpaceConfig
    from brainstacks_core.stacks.null_space import compute_bases

    model, stacks, _ = ctx.stacked_llama()
    sc, r = ctx.scale, ctx.scale.run
    g = torch.Generator().manual_seed(5)

    def batches():
        for _ in range(sc.null_batches):
            ids = torch.randint(4, len(ctx.tok), (sc.batch, sc.seq), generator=g)
            yield {"input_ids": ids.to(ctx.device), "attention_mask": torch.ones_like(ids).to(ctx.device)}

    groups = [(ids, list(batches())) for ids in list(stacks.values())[:2]]
    cfg = NullSpaceConfig(k=r.k_per_domain, max_rows=r.max_rows)
    free(ctx.device)
    resident = model_bytes(model, ctx.device.type)
    ctx.mem.reset_peak()
    with Clock(ctx.device) as clock:
        bases = compute_bases(model, groups, cfg, seed=0)
    peak = ctx.mem.peak(resident)
    kept = [b.shape[0] for b in bases.values()]
    rc = ctx.run_for(sc.llama, collect_batch=sc.batch, collect_seq=sc.seq)
    del bases, groups
    free(ctx.device)
    return {"domains": 2, "batches_per_domain": sc.null_batches, "max_rows": r.max_rows, "k": r.k_per_domain,
            "seconds": figure(clock.seconds, "s"), "directions_per_layer_min": min(kept),
            "directions_per_layer_max": max(kept), "peak_memory": ratio(peak, peaks(sc.llama, rc)["collection"])}


def section_oracle(ctx: Context) -> dict:
    """bench_routing's oracle arms on the stacked model: per-row weights vs one combination per forward."""
    from bench_routing import ORACLE_ARMS, oracle_arms, pairs_frame
    from brainstacks_core.routing.config import RouterConfig

    model, stacks, _ = ctx.stacked_llama()
    sc = ctx.scale
    pairs = pairs_frame(sc.oracle_pairs, sc.oracle_length)
    cfg = RouterConfig(max_length=min(256, sc.seq), oracle_batch_size=16, exhaustive_sample=0)
    free(ctx.device)
    resident = model_bytes(model, ctx.device.type)
    ctx.mem.reset_peak()
    out = oracle_arms(ctx.tok, model, stacks, pairs, cfg, arms=ORACLE_ARMS[:2], sync=ctx.sync)
    peak = ctx.mem.peak(resident)
    (t_row, ref), (t_one, one) = out[ORACLE_ARMS[0]], out[ORACLE_ARMS[1]]
    from brainstacks_core.training.sft_data import tokenize_for_loss
    longest = max(len(ids) for ids, _ in tokenize_for_loss(ctx.tok, pairs, cfg.max_length))
    speedup = (ref.computed / t_row) / (one.computed / t_one)
    same = list(ref.targets["combo"]) == list(one.targets["combo"])
    return {"pairs": len(pairs), "losses": ref.computed, "batch": cfg.oracle_batch_size,
            "per_row_rows_per_s": figure(ref.computed / t_row, "rows/s", forwards=ref.forwards),
            "one_combination_rows_per_s": figure(one.computed / t_one, "rows/s", forwards=one.forwards),
            "per_row_speedup": figure(speedup, "x", ">= 3", speedup >= 3), "same_combinations": same,
            "peak_memory": ratio(peak, peaks(sc.llama, ctx.run_for(sc.llama, oracle_seq=longest))["oracle"])}


def section_hflm(ctx: Context) -> dict:
    """BrainstacksLM (lm-eval HFLM) log-likelihoods of 4-choice questions in base, ungated and routed mode."""
    from lm_eval.api.instance import Instance

    from bench_routing import DOMAINS
    from brainstacks_core.evaluation.model import BrainstacksLM
    from brainstacks_core.routing.config import RouterConfig
    from brainstacks_core.routing.router import MetaRouter, TrainedRouter

    model, stacks, _ = ctx.stacked_llama()
    sc = ctx.scale
    contexts = texts(sc.hflm_questions, sc.hflm_words, seed=3)
    choices = texts(4 * sc.hflm_questions, 4, seed=4)
    reqs = [Instance("loglikelihood", {}, (c, " " + choices[4 * q + j]), 4 * q + j, ("gpu_check", q, 1))
            for q, c in enumerate(contexts) for j in range(4)]
    versions = {sid: f"v-{sid}" for ids in stacks.values() for sid in ids}
    rcfg = RouterConfig(max_length=min(256, sc.seq))
    torch.manual_seed(0)
    net = MetaRouter(sc.llama.hidden, len(DOMAINS), rcfg).to(ctx.device)
    router = TrainedRouter(net, model, ctx.tok, DOMAINS, rcfg, version="gpu-check-random-router")
    longest = max(len(ctx.tok(c + " " + x)["input_ids"]) for c, x in zip(contexts, choices))
    out, groups = {}, {}
    free(ctx.device)
    resident = model_bytes(model, ctx.device.type)
    peak = float("nan")
    for mode in ("base", "ungated", "routed"):
        lm = BrainstacksLM(model, ctx.tok, mode=mode, base_fingerprint="fp", stack_versions=versions,
                           router=router if mode == "routed" else None,
                           domain_stacks=stacks if mode == "routed" else None, batch_size=8,
                           max_length=max(longest + 8, 64), device=str(ctx.device), request_bars=False)
        lm.loglikelihood(reqs[:8], disable_tqdm=True)  # warm-up
        if mode == "base":
            ctx.mem.reset_peak()
        with Clock(ctx.device) as clock:
            res = lm.loglikelihood(reqs, disable_tqdm=True)
        if mode == "base":
            peak = ctx.mem.peak(resident)
        assert all(math.isfinite(x[0]) for x in res), f"{mode}: non-finite log-likelihood"
        out[mode] = len(reqs) / clock.seconds
        groups[mode] = len({json.dumps(sorted(w.items())) for w in lm.weights_for(contexts)})
    free(ctx.device)
    rel = out["routed"] / out["base"]
    return {"requests": len(reqs), "batch": 8, "longest_tokens": longest,
            "base_items_per_s": figure(out["base"], "items/s"),
            "ungated_items_per_s": figure(out["ungated"], "items/s", ungated_over_base=out["ungated"] / out["base"]),
            "routed_items_per_s": figure(out["routed"], "items/s", routing_groups=groups["routed"]),
            "routed_over_base": figure(rel, "x", ">= 0.8", rel >= 0.8),
            "router": "MetaRouter, random init (feature forward + network per context, no cache)",
            "peak_memory_base_mode": ratio(peak, peaks(sc.llama, ctx.run_for(sc.llama, eval_batch=8,
                                                                                 eval_seq=longest))["evaluation"])}


def section_features(ctx: Context) -> dict:
    """routing.features.all_features: base-only hidden states of prompts, kept on the host."""
    from brainstacks_core.routing.config import RouterConfig
    from brainstacks_core.routing.features import all_features

    model, _, _ = ctx.stacked_llama()
    sc = ctx.scale
    t = min(256, sc.seq)
    cfg = RouterConfig(max_length=t, feature_batch_size=16)
    prompts = texts(sc.feature_prompts, t, seed=6)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    all_features(model, ctx.tok, prompts[:16], cfg, dtype=dtype, progress=False)  # warm-up
    free(ctx.device)
    resident = model_bytes(model, ctx.device.type)
    ctx.mem.reset_peak()
    with Clock(ctx.device) as clock:
        feats, mask = all_features(model, ctx.tok, prompts, cfg, dtype=dtype, progress=False)
    peak = ctx.mem.peak(resident)
    rf = ctx.run_for(sc.llama, feature_batch=16, feature_seq=feats.shape[1], router_prompts=1,
                     act_bytes=2 if ctx.cuda else 4)
    per_prompt = feats.numel() * feats.element_size() / len(prompts)
    model_per_prompt = breakdown(sc.llama, rf)["host_features"] * (2 if ctx.cuda else 4) / 2
    return {"prompts": len(prompts), "tokens": int(feats.shape[1]), "dtype": str(dtype),
            "prompts_per_s": figure(len(prompts) / clock.seconds, "prompts/s"),
            "host_bytes_per_prompt": ratio(per_prompt, model_per_prompt, expect="1.0"),
            "peak_memory": ratio(peak, peaks(sc.llama, rf)["features"])}


def section_loss(ctx: Context) -> dict:
    """training.loss.completion_loss on the same weights and rows: CPU fp32, device bf16, device NF4."""
    from brainstacks_core.stacks.inject import only_stacks
    from brainstacks_core.training.loss import completion_loss

    sc = ctx.scale
    rows = sft_rows(sc.loss_rows, sc.loss_len, seed=9)
    cpu = ctx.load("llama", quantize=False, device=torch.device("cpu"))  # fp32 on the CPU
    fp32 = completion_loss(cpu, ctx.tok, rows, sc.loss_len, batch_size=sc.loss_rows)
    del cpu
    if ctx.cuda:
        bf = ctx.load("llama", quantize=False)  # load_base picks bf16 on CUDA
    else:
        bf = ctx.load("llama", quantize=False).to(torch.bfloat16)
    bf16 = completion_loss(bf, ctx.tok, rows, sc.loss_len, batch_size=sc.loss_rows)
    del bf
    free(ctx.device)
    model, _, _ = ctx.stacked_llama()
    with only_stacks(model, []):
        nf4 = completion_loss(model, ctx.tok, rows, sc.loss_len, batch_size=sc.loss_rows)
    rel = abs(bf16 - fp32) / abs(fp32)
    return {"rows": len(rows), "tokens_per_row": sc.loss_len, "cpu_fp32": fp32, "device_bf16": bf16,
            "device_nf4" if ctx.quantize else "device_base_fp32": nf4,
            "bf16_vs_fp32_rel_diff": figure(rel, "fraction", expect="<= 0.01"),
            "nf4_vs_fp32_rel_diff": figure(abs(nf4 - fp32) / abs(fp32), "fraction")}


def section_gemma(ctx: Context) -> dict:
    """2-layer Gemma-3 at 12B widths: per-layer bytes x 48 vs the model; its SFT step's peak vs the model."""
    from bench_routing import DOMAINS
    from brainstacks_core.stacks.inject import inject_stacks

    sc, dev = ctx.scale, ctx.device.type
    full, r = sc.gemma_full, ctx.run_for(sc.gemma)
    free(ctx.device)
    m0 = ctx.mem.allocated()
    model = ctx.load("gemma")
    measured = ctx.mem.allocated() - m0 if ctx.cuda else model_bytes(model, dev)
    layers = model.model.layers
    per_layer = [model_bytes(layer, dev) for layer in layers]
    rest = model_bytes(model, dev) - sum(per_layer)  # embeddings (tied head), final norm
    inject_stacks(model, ctx.moe)
    before = model_bytes(model, dev)
    add_frozen_stacks(model, r.stacks, DOMAINS)
    stack_layer = (model_bytes(model, dev) - before) / len(layers)
    mf = breakdown(full, r)
    out = {"built": sc.gemma.name, "extrapolated_to": f"{full.layers} layers",
           "base_2_layers": ratio(measured, breakdown(sc.gemma, r)["base"]),
           "base_per_layer_mb": sum(per_layer) / len(per_layer) / 1e6,
           "base_layers_x_full": ratio(sum(per_layer) / len(per_layer) * full.layers + rest, mf["base"]),
           "frozen_per_layer_mb": stack_layer / 1e6,
           "frozen_x_full": ratio(stack_layer * full.layers, mf["frozen"])}
    sft = measure_sft(ctx, model, sc.gemma, 1, sc.gemma_sft_steps, 1)
    p = breakdown(sc.gemma, ctx.run_for(sc.gemma, batch=sc.batch, seq=sc.seq))
    out["sft"] = {k: sft[k] for k in ("s_per_step", "tokens_per_s", "peak_memory", "host_syncs")}
    out["sft"]["model_train_logits_gb"] = p["train_logits"] / GB
    out["sft"]["model_full_vocab_logits_gb_not_built"] = p["train_logits_full"] / GB
    del model
    free(ctx.device)
    return out


RUNNERS = {name: globals()[f"section_{name}"] for name in SECTIONS}


# ------------------------------------------------------------------------------------------ driver
def finite(obj) -> bool:
    """Whether every number in a JSON-shaped object is finite."""
    if isinstance(obj, dict):
        return all(finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def run(sections: list[str], dry_run: bool, time_limit: float) -> dict:
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU worker, or pass --dry-run for the CPU smoke run")
    device = torch.device("cpu") if dry_run else torch.device("cuda", torch.cuda.current_device())
    scale = DRY if dry_run else GPU
    quantize = True
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        quantize = False
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dry_run": dry_run, "torch": torch.__version__,
              "base_weights": "NF4 4-bit (bitsandbytes)" + (", fp32 compute on the CPU" if dry_run else ", bf16 compute")
              if quantize else "fp32: bitsandbytes is not installed, no 4-bit",
              "shapes": {"llama": asdict(scale.llama), "gemma": asdict(scale.gemma)},
              "sections": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(scale, device, Path(tmp), quantize)
        for name in sections:
            left = time_limit - (time.perf_counter() - start)
            if left <= 5:
                report["sections"][name] = {"skipped": f"the run's time limit ({time_limit:.0f} s) was reached"}
                continue
            budget = min(scale.budgets[name], left)
            log.info("section %s (budget %.0f s)", name, budget)
            t0 = time.perf_counter()
            try:
                with time_budget(budget):
                    res = RUNNERS[name](ctx)
            except SectionTimeout as err:
                res = {"error": f"{name} {err}"}
            except Exception as err:  # noqa: BLE001 - one failing section must not hide the others
                log.exception("section %s failed", name)
                res = {"error": f"{type(err).__name__}: {err}"}
            res["section_seconds"] = time.perf_counter() - t0
            report["sections"][name] = res
            log.info("section %s done in %.1f s", name, res["section_seconds"])
    report["total_seconds"] = time.perf_counter() - start
    report["all_finite"] = finite(report)
    report["errors"] = [n for n, r in report["sections"].items() if "error" in r]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny shapes, same code (~1 min): what tests/test_gpu_check.py runs")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all): {','.join(SECTIONS)}")
    parser.add_argument("--time-limit", type=float, default=480.0,
                        help="seconds for the whole run (default 480); sections past it are skipped")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    report = run(sections, args.dry_run, args.time_limit)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0 if not report["errors"] and report["all_finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
