"""GPU and host memory model of the paper profiles, from the code's own allocation rules (issues 8, 21).

Run: ``.venv/bin/python benchmarks/memory_model.py``

A pure function of shapes (:class:`Shapes`, :class:`Run`), so ``benchmarks/gpu_check.py`` can
compare it with what a GPU measures (it prints measured / model for each figure). Bytes of each
part, 4-bit NF4 base, E=4, r=16, bf16 frozen stacks, 10 frozen stacks:

* base: NF4 linear weights 0.5 B/param + one fp32 absmax per 64 weights (bitsandbytes without
  double quantisation); embeddings / lm_head and the norms in bf16 (Gemma ties them); Gemma's
  SigLIP tower (~0.42B params) in bf16 when ``extra_bf16_params`` is set.
* frozen stacks: :class:`FrozenBank`, held once: ``E*r*(in+out) + E*in`` per projection in
  ``frozen_dtype``; on the GPU unless ``Run.frozen_on_host`` (``place_frozen_stacks``).
  Host side, always: each stack's null-space basis (fp32, the K it trained under) and its
  router-noise projection (``frozen_dtype``).
* active stack: fp32 params (A, B, router, noise); grads + AdamW m, v: 3 x that again.
* active basis: ``K_total x out`` fp32 per projection, K = 64 per earlier domain capped at ``out``.
* training activations (estimate): gradient checkpointing keeps one ``[B, T, hidden]`` bf16 per
  layer, plus one layer's recompute (~``B*T*(hidden*12 + inter*3)`` bf16) and, in that layer, the
  stacks' transients (the active stack runs in fp32 on an fp32 copy of its input; the frozen run
  holds ``[N, S*E*r]`` bf16).
* training logits: trl 1.16's ``SFTTrainer.compute_loss`` does NOT build ``B x T x vocab`` logits.
  It patches the model with ``trl.trainer.utils.add_fused_lm_head`` and calls it with
  ``fused_lm_head=True``: the backbone's hidden states go through the LM head in tiles of 4,096
  tokens x 32,768 vocabulary (``trl/kernels/chunked_logprob.py``, one bf16 tile buffer), with
  fp32 per-token statistics (log-prob, entropy, top-1) and an fp32 gradient of the hidden states.
  On CUDA only the labelled positions are scored (``hidden[mask]``); on CPU every position.
  At Gemma-3 B=4, T=512 that is ~0.2 GB. The full-vocabulary figure (bf16 head output + fp32
  upcast + fp32 gradient, ``B*T*V*10`` B = 5.4 GB) is what a full-logit loss would hold
  (trl < 1.x, ``compute_loss_func``, label smoothing, the model's own ``labels=`` loss); it is
  printed for reference and not part of the peak.
* completion loss (``training.loss``): the LM head on 512 completion positions at a time,
  ``512 x V`` bf16 + fp32.
* evaluation (lm-eval HFLM, ``evaluation.model``): one batch's full logits ``[B, T, V]`` in bf16
  (the model's output) and their ``log_softmax`` (HFLM's ``softmax_dtype`` default: the same
  dtype), ``B*T*V*4`` B; plus one layer's inference activations. No KV cache (transformers 5
  builds none unless ``use_cache=True`` is passed).
* oracle forward (``routing.pair_loss``): decoder hidden states ``[B, T, H]`` + the 512-token
  logit chunk + one layer's activations + the frozen run's ``[N, S*E*r]``.
* router features (``routing.features``): decoder only (no LM head), ``output_hidden_states``
  keeps L+1 ``[B, T, H]`` bf16, the mix of two layers in fp32.
* null-space collection (a separate phase): one reservoir of ``max_rows x out`` per projection
  in bf16, one domain at a time, one layer's fp32 SVD input ``max_rows x max(out)``, and the
  collection forward, a full causal-LM forward (``collect_frozen_deltas`` calls the model, so
  its ``[B, T, V]`` bf16 logits exist for each batch).
* host RAM: frozen stacks when placed on the host; the stacks' host-side bases and noise; the
  router's training features (``all_features``: ``N x T x H`` bf16, kept on the host); one stack
  load of the stack store (the file's bytes + its tensors, transient).

Peaks: training = base + frozen + active + optimizer + basis + activations + logits;
collection = base + frozen + reservoir + SVD input + collection forward; evaluation, oracle and
features = base + frozen + that forward; host = the host parts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GB = 1e9
LOGIT_TOKENS, LOGIT_VOCAB = 4096, 32768  # trl 1.16 chunked_logprob TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE


@dataclass(frozen=True)
class Shapes:
    """A decoder-only LM's shapes (what the memory model reads).

    Attributes:
        name: label.
        hidden: H.
        inter: MLP width.
        layers: L decoder layers.
        heads: attention heads.
        kv_heads: key/value heads.
        head_dim: per-head width.
        vocab: V.
        tied: embeddings and LM head share one tensor.
        extra_bf16_params: parameters outside the language model kept in bf16 (vision tower).
        norms_per_layer: ``hidden``-wide norm vectors per layer (Llama 2, Gemma-3 4).
        qk_norm: Gemma-3's per-head q/k norms (``2 * head_dim`` per layer).
    """

    name: str
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    extra_bf16_params: int = 0  # vision tower
    norms_per_layer: int = 2
    qk_norm: bool = False

    def projections(self) -> list[tuple[int, int]]:
        """(in, out) of the 7 wrapped projections of one decoder layer."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, self.inter), (h, self.inter), (self.inter, h)]

    def with_layers(self, layers: int) -> "Shapes":
        """The same widths with ``layers`` decoder layers (gpu_check's 2-layer Gemma)."""
        return replace(self, name=f"{self.name} ({layers} layers)", layers=layers, extra_bf16_params=0)


TINYLLAMA = Shapes("TinyLlama-1.1B", 2048, 5632, 22, 32, 4, 64, 32000, tied=False)
GEMMA = Shapes("Gemma-3-12B", 3840, 15360, 48, 16, 8, 256, 262144, tied=True, extra_bf16_params=417_000_000,
               norms_per_layer=4, qk_norm=True)


@dataclass(frozen=True)
class Run:
    """The run's settings that decide memory (defaults: configs/gemma3-12b-paper-local.yaml, last domain)."""

    stacks: int = 10
    domains: int = 5
    experts: int = 4
    rank: int = 16
    frozen_bytes: int = 2  # bf16
    frozen_on_host: bool = False  # place_frozen_stacks(model, "cpu")
    k_per_domain: int = 64
    earlier_domains: int = 4  # the last of 5 domains
    max_rows: int = 8192  # gemma3-12b-paper-local basis.max_rows
    batch: int = 4
    seq: int = 512
    labelled_fraction: float = 1.0  # share of the B*(T-1) positions with a label (CUDA scores only those)
    logit_compact: bool = True  # CUDA (Triton) scores labelled positions only; CPU scores all
    chunk_tokens: int = 512  # training.loss chunk
    collect_batch: int = 4  # null-space collection batches (training.sft.batch_size)
    collect_seq: int = 512
    eval_batch: int = 8  # eval.batch_size
    eval_seq: int = 2048  # eval.max_length (HFLM pads each batch to its longest request)
    oracle_batch: int = 16  # router.oracle_batch_size
    oracle_seq: int = 256  # router.max_length
    feature_batch: int = 16  # router.feature_batch_size
    feature_seq: int = 256
    router_prompts: int = 1500  # router split: 0.1 x 3000 rows x 5 domains
    act_bytes: int = 2  # bf16 compute: activations, logits, embeddings and norms (fp32 on the CPU: 4)


def _stack_params(s: Shapes, run: Run) -> int:
    return sum(run.experts * run.rank * (i + o) + run.experts * i for i, o in s.projections()) * s.layers


def _layer_transient(s: Shapes, n: int, act: int) -> float:
    """One decoder layer's inference working set for ``n`` tokens (q/k/v/o, MLP gate/up/act)."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return n * (2 * s.hidden + 2 * q + 2 * kv + 3 * s.inter) * act


def _frozen_run(s: Shapes, run: Run, n: int) -> float:
    """The batched frozen run's ``[N, S*E*r]`` + ``[N, S*E]`` + ``[N, out]`` of the widest projection."""
    wide = max(o for _, o in s.projections())
    return n * (run.stacks * run.experts * (run.rank + 2) + wide) * run.act_bytes


def breakdown(s: Shapes, run: Run) -> dict[str, float]:
    """Bytes of every part (keys: see :data:`LABELS`); where each lives: :data:`WHERE`."""
    projs = s.projections()
    e, r, act = run.experts, run.rank, run.act_bytes
    linear = sum(i * o for i, o in projs) * s.layers
    norms = (s.norms_per_layer * s.hidden + (2 * s.head_dim if s.qk_norm else 0)) * s.layers + s.hidden
    stack = _stack_params(s, run)
    per_domain = max(1, run.stacks // run.domains)
    # host side: stack j of domain d trained under K = 64 * d (capped at out), fp32; noise E x in
    basis_rows = [min(run.k_per_domain * (j // per_domain), o) * o for j in range(run.stacks) for _, o in projs]
    noise = sum(e * i for i, _ in projs) * s.layers * run.frozen_bytes
    active = sum(e * r * (i + o) + 2 * e * i for i, o in projs) * s.layers * 4
    k = run.k_per_domain * run.earlier_domains
    bt = run.batch * run.seq
    n_logit = int(run.batch * (run.seq - 1) * (run.labelled_fraction if run.logit_compact else 1.0))
    tile = min(n_logit, LOGIT_TOKENS) * min(s.vocab, LOGIT_VOCAB)
    tile_bytes = tile * act if run.logit_compact else tile * (4 + 4 * 3)  # CPU: fp32 tile + fp32 temporaries
    recompute = bt * (s.hidden * 12 + s.inter * 3) * act
    stack_tmp = bt * sum(i + o for i, o in projs) * 4 + _frozen_run(s, run, bt)
    eval_n, orc_n, feat_n = run.eval_batch * run.eval_seq, run.oracle_batch * run.oracle_seq, \
        run.feature_batch * run.feature_seq
    chunk_logits = run.chunk_tokens * s.vocab * (4 + act)
    collect_n = run.collect_batch * run.collect_seq
    last_basis = sum(basis_rows[-len(projs):]) * s.layers * 4
    file_bytes = stack * run.frozen_bytes + last_basis + noise  # the last stack's file: forward tensors + basis
    return {
        "base": linear * (0.5 + 4 / 64) + (s.vocab * s.hidden * (1 if s.tied else 2) + norms) * act
        + s.extra_bf16_params * 2,
        "frozen": run.stacks * stack * run.frozen_bytes,
        "active": active,
        "optimizer": 3 * active,
        "active_basis": sum(min(k, o) * o * 4 for _, o in projs) * s.layers,
        "train_activations": s.layers * bt * s.hidden * act + recompute + stack_tmp,
        "train_logits": tile_bytes + n_logit * s.hidden * (act + 4 + act) + 8 * n_logit * 4,
        "train_logits_full": bt * s.vocab * (act + 4 + 4),
        "loss_chunk": chunk_logits,
        "hflm_forward": eval_n * s.vocab * 2 * act + _layer_transient(s, eval_n, act) + _frozen_run(s, run, eval_n),
        "oracle_forward": orc_n * s.hidden * act + chunk_logits + _layer_transient(s, orc_n, act)
        + _frozen_run(s, run, orc_n),
        "feature_forward": (s.layers + 1) * feat_n * s.hidden * act + 3 * feat_n * s.hidden * 4
        + _layer_transient(s, feat_n, act),
        "reservoir": sum(run.max_rows * o * act for _, o in projs) * s.layers,
        "svd_input": run.max_rows * max(o for _, o in projs) * 4,
        "collect_forward": collect_n * s.vocab * act + _layer_transient(s, collect_n, act)
        + _frozen_run(s, run, collect_n),
        "host_stack_side": sum(basis_rows) * s.layers * 4 + run.stacks * noise,
        "host_features": run.router_prompts * run.feature_seq * s.hidden * 2,
        "host_store_load": 2 * file_bytes,
    }


LABELS = {
    "base": "base (4-bit NF4 linears, bf16 embeddings/norms)",
    "frozen": "frozen stacks (FrozenBank, held once)",
    "active": "active stack params (fp32)",
    "optimizer": "active stack grads + AdamW m, v (fp32)",
    "active_basis": "active null-space basis (fp32)",
    "train_activations": "training activations (ckpt, est.)",
    "train_logits": "training logits (trl 1.16 fused LM head)",
    "train_logits_full": "full-vocab logits if materialized (ref.)",
    "loss_chunk": "completion-loss logit chunk",
    "hflm_forward": "HFLM batch logits + log_softmax",
    "oracle_forward": "oracle forward (pair_loss)",
    "feature_forward": "router feature forward (no LM head)",
    "reservoir": "null-space reservoir (bf16)",
    "svd_input": "null-space SVD input (1 layer, fp32)",
    "collect_forward": "null-space collection forward (full LM)",
    "host_stack_side": "host: stacks' bases + router noise",
    "host_features": "host: router training features (bf16)",
    "host_store_load": "host: one stack-store load (transient)",
}


def peaks(s: Shapes, run: Run) -> dict[str, float]:
    """Peak bytes of each phase: GPU ``training``, ``collection``, ``evaluation``, ``oracle``,
    ``features``, ``completion_loss``; ``host`` RAM (frozen stacks there when placed on the host)."""
    p = breakdown(s, run)
    frozen_gpu = 0.0 if run.frozen_on_host else p["frozen"]
    resident = p["base"] + frozen_gpu
    return {
        "training": resident + p["active"] + p["optimizer"] + p["active_basis"] + p["train_activations"]
        + p["train_logits"],
        "collection": resident + p["reservoir"] + p["svd_input"] + p["collect_forward"],
        "evaluation": resident + p["hflm_forward"],
        "oracle": resident + p["oracle_forward"],
        "features": resident + p["feature_forward"],
        "completion_loss": resident + p["loss_chunk"] + _layer_transient(s, run.batch * run.seq, run.act_bytes),
        "host": (p["frozen"] if run.frozen_on_host else 0.0) + p["host_stack_side"] + p["host_features"]
        + p["host_store_load"],
    }


def main() -> int:
    run = Run()
    gpu = 80 * GB
    ok = True
    for s in (TINYLLAMA, GEMMA):
        p, pk = breakdown(s, run), peaks(s, run)
        print(f"\n{s.name}: {s.layers} layers x 7 projections, hidden {s.hidden}, vocab {s.vocab}; "
              f"B={run.batch}, T={run.seq}, {run.stacks} stacks")
        for key, label in LABELS.items():
            print(f"  {label:<48} {p[key] / GB:>8.2f} GB")
        for name, b in pk.items():
            print(f"  {'peak ' + name:<48} {b / GB:>8.2f} GB")
        gpu_peak = max(b for n, b in pk.items() if n != "host")
        fits = gpu_peak <= gpu
        ok &= fits
        print(f"  fits an 80 GB GPU: {'yes' if fits else 'NO'} (peak {gpu_peak / GB:.1f} GB); "
              f"frozen stacks on the host would free {p['frozen'] / GB:.1f} GB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
