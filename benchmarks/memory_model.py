"""GPU memory model of the paper profiles, from the code's own allocation rules (issue 8).

Run: ``.venv/bin/python benchmarks/memory_model.py``

For TinyLlama-1.1B and Gemma-3-12B shapes (4-bit NF4 base, 10 frozen stacks,
E=4, r=16, bf16 frozen stacks), the bytes of each part:

* base: NF4 linear weights 0.5 B/param + one fp32 absmax per 64 weights
  (bitsandbytes without double quantisation); embeddings / lm_head in bf16
  (Gemma ties them); Gemma's SigLIP tower (~0.42B params) counted in bf16.
* frozen stacks: :class:`FrozenBank`, held once: ``E*r*(in+out) + E*in`` per
  projection in ``frozen_dtype`` (on the host with ``place_frozen_stacks``);
  their basis and noise projection live on the host (not counted here).
* active stack + AdamW: fp32 params (A, B, router, noise) x 4 (param, grad, m, v).
* active basis: ``K_total x out`` fp32 per projection, K = 64 per earlier domain
  capped at ``out`` (one buffer, set once).
* null-space collection (a separate phase, before the next domain trains): one
  reservoir of ``max_rows x out`` per projection in the compute dtype (bf16),
  one domain at a time, plus one layer's fp32 SVD input ``max_rows x max(out)``.
* evaluation logits: fp32 ``chunk_tokens x vocab`` (the loss is computed in
  token chunks, not for the whole batch).
* activations (estimate): gradient checkpointing keeps one ``[B, T, hidden]``
  bf16 per layer, plus one layer's recompute (~ ``B*T*(hidden*12 + inter*3)``
  bf16) and the chunked logits.

Peak training = base + frozen + active/AdamW + basis + activations;
peak collection = base + frozen + reservoir + SVD input.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Shapes:
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

    def projections(self) -> list[tuple[int, int]]:
        """(in, out) of the 7 wrapped projections of one decoder layer."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, self.inter), (h, self.inter), (self.inter, h)]


TINYLLAMA = Shapes("TinyLlama-1.1B", 2048, 5632, 22, 32, 4, 64, 32000, tied=False)
GEMMA = Shapes("Gemma-3-12B", 3840, 15360, 48, 16, 8, 256, 262144, tied=True, extra_bf16_params=417_000_000)


@dataclass(frozen=True)
class Run:
    stacks: int = 10
    experts: int = 4
    rank: int = 16
    frozen_bytes: int = 2  # bf16
    k_per_domain: int = 64
    earlier_domains: int = 4  # the last of 5 domains
    max_rows: int = 8192  # gemma3-12b-paper basis.max_rows
    batch: int = 4
    seq: int = 512
    chunk_tokens: int = 1024


def parts(s: Shapes, run: Run) -> dict[str, float]:
    projs = s.projections()
    e, r = run.experts, run.rank
    linear = sum(i * o for i, o in projs) * s.layers
    base = linear * (0.5 + 4 / 64) + s.vocab * s.hidden * 2 * (1 if s.tied else 2) + s.extra_bf16_params * 2
    stack_params = sum(e * r * (i + o) + e * i for i, o in projs) * s.layers
    frozen = run.stacks * stack_params * run.frozen_bytes
    active_params = sum(e * r * (i + o) + 2 * e * i for i, o in projs) * s.layers
    active = active_params * 4 * 4
    k = run.k_per_domain * run.earlier_domains
    basis = sum(min(k, o) * o * 4 for _, o in projs) * s.layers
    reservoir = sum(run.max_rows * o * 2 for _, o in projs) * s.layers
    svd = run.max_rows * max(o for _, o in projs) * 4
    logits = run.chunk_tokens * s.vocab * 4
    bt = run.batch * run.seq
    acts = s.layers * bt * s.hidden * 2 + bt * (s.hidden * 12 + s.inter * 3) * 2 + logits
    return {"base (4-bit NF4)": base, f"frozen stacks x{run.stacks} (bf16, held once)": frozen,
            "active stack + grads + AdamW (fp32)": active, f"active basis (K={k}, fp32)": basis,
            f"eval logits chunk ({run.chunk_tokens} tok, fp32)": logits,
            f"activations (B={run.batch}, T={run.seq}, ckpt; est.)": acts,
            f"null-space reservoir ({run.max_rows} rows, bf16)": reservoir, "null-space SVD input (1 layer)": svd}


def main() -> int:
    run = Run()
    gpu = 80 * GB
    ok = True
    for s in (TINYLLAMA, GEMMA):
        p = parts(s, run)
        names = list(p)
        train = sum(p[n] for n in names[:6]) - p[names[4]]  # the logits chunk is inside the activations
        collect = sum(p[n] for n in names[:2]) + p[names[6]] + p[names[7]]
        print(f"\n{s.name}: {s.layers} layers x 7 projections, hidden {s.hidden}, vocab {s.vocab}")
        for n in names:
            print(f"  {n:<48} {p[n] / GB:>8.2f} GB")
        print(f"  {'peak training':<48} {train / GB:>8.2f} GB")
        print(f"  {'peak null-space collection':<48} {collect / GB:>8.2f} GB")
        fits = max(train, collect) <= gpu
        ok &= fits
        print(f"  fits an 80 GB GPU: {'yes' if fits else 'NO'} (peak {max(train, collect) / GB:.1f} GB)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
