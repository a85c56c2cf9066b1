"""Per-domain subspace and expert utilisation of a trained run (the paper's Figs. 7-10), measured in the report stage.

What belongs here: measuring, saving and reading what the subspace and expert figures
plot. Nothing in training records it (the null-space files hold the PREVIOUS domains'
directions, merged, without singular values, and the last domain has none), so the report
stage measures it from the frozen stacks on a few validation batches, once per version:

* **subspace**: per domain and stacked layer, that domain's own frozen stacks (the others
  off) on its own first ``null_space_val_rows`` validation rows give the delta rows
  ``D [N, out]`` exactly as :func:`~brainstacks_core.stacks.null_space.collect_frozen_deltas`
  samples them for the null space (``basis.rows``, ``basis.max_rows``, the run's seed); an
  SVD keeps the top ``basis.k`` right singular vectors ``V [k, out]`` and singular values
  ``S [k]``. With ``combine: per_domain`` V spans what the next domain's null space
  protects for this domain.
* **expert utilisation**: in the same pass, each of the domain's stacks' inner routers on the
  real tokens entering the layer: the mean top-k gate per expert ``[S, E]`` (each row sums to
  1; uniform use is ``1/E``, the paper's 0.25).

One safetensors file per domain, ``<store>/reports/subspace/<run>/<domain>-<version>.safetensors``
with ``<layer>/directions``, ``<layer>/singular_values``, ``<layer>/expert_usage`` and the
stack ids in its metadata; the version hashes the stacks' versions, the validation version,
the basis settings and the row count, so a re-run reads the files and loads no model.
Memory: one domain's rows at a time, ``max_rows x out`` fp32 per layer (as the null space).

Overlap (:func:`principal_cosines`): the cosines of the principal angles between two
domains' ``V`` at a layer are the singular values of ``V_a V_b^T``; their mean is the
overlap plotted (0 = orthogonal subspaces, 1 = the same subspace).
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from brainstacks_core.files import atomic_write, canonicalize_safetensors
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.versioning import content_hash
from brainstacks_core.stacks.config import NullSpaceConfig
from brainstacks_core.stacks.inject import only_stacks, stacked_layers
from brainstacks_core.stacks.moe_lora import top_k_gates
from brainstacks_core.stacks.null_space import collect_frozen_deltas

log = logging.getLogger(__name__)


def subspace_dir(ctx: StoreContext, run_name: str) -> Path:
    """Folder of a run's per-domain subspace files."""
    return ctx.store / "reports" / "subspace" / run_name


def top_spectrum(deltas: torch.Tensor, cfg: NullSpaceConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``cfg.k`` singular values and right singular vectors of ``deltas`` (as the null space takes them).

    Args:
        deltas: ``[N, out]`` frozen-stack deltas.
        cfg: ``k`` and the SVD settings (full SVD when ``min(N, out) <= full_svd_below``).
        seed: seed of the randomized SVD (the global RNG is left untouched).

    Returns:
        ``(S [k'], V [k', out])`` fp32 on the CPU, ``k' = min(k, N, out)``, S descending.
    """
    d = deltas.float()
    k = min(cfg.k, *d.shape)
    if min(d.shape) <= cfg.full_svd_below:
        _, s, vh = torch.linalg.svd(d, full_matrices=False)
        return s[:k].cpu(), vh[:k].cpu()
    with torch.random.fork_rng(devices=[d.device] if d.device.type == "cuda" else []):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(d, q=min(k + cfg.oversample, *d.shape), niter=cfg.niter)
    return s[:k].cpu(), v[:, :k].T.contiguous().cpu()


@contextmanager
def _gate_usage(model, stack_ids: list[str], totals: dict[str, torch.Tensor], counts: dict[str, int], masks: dict):
    """Hooks adding, per layer, the summed top-k gates ``[S, E]`` of ``stack_ids`` over the real tokens."""

    def hook(name):
        def fn(module, inputs, _output):
            x = inputs[0].reshape(-1, module.in_features)
            x = x[masks["mask"].to(x.device)]  # [n_real, in]
            rows = []
            for sid in stack_ids:
                st = module.frozen[sid]
                gates, _ = top_k_gates(F.linear(x, st.router.to(x.device, x.dtype)).float(),
                                       module.config.top_k)  # [n_real, E]
                rows.append(gates.sum(0).cpu())
            totals[name] = totals.get(name, 0) + torch.stack(rows)  # [S, E]
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [layer.register_forward_hook(hook(n)) for n, layer in stacked_layers(model).items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def measure_domain(model, batches: list[dict[str, torch.Tensor]], stack_ids: list[str], cfg: NullSpaceConfig,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """One domain's subspace and expert utilisation per stacked layer (module docstring).

    Args:
        model: the base with the run's frozen stacks attached.
        batches: the domain's validation batches ``{"input_ids", "attention_mask": [B, T]}`` on the model's device.
        stack_ids: the domain's frozen stacks (the only ones on while measuring).
        cfg: the run's null-space settings (``k``, ``rows``, ``max_rows``, SVD settings).
        seed: the run's seed.

    Returns:
        ``{"<layer>/directions": [k, out], "<layer>/singular_values": [k], "<layer>/expert_usage": [S, E]}`` fp32.
    """
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    masks: dict = {}
    with only_stacks(model, stack_ids):
        deltas = collect_frozen_deltas(model, batches, cfg.max_rows, seed=seed, rows=cfg.rows)
        with _gate_usage(model, stack_ids, totals, counts, masks):
            for b in batches:
                masks["mask"] = b["attention_mask"].reshape(-1).bool()
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    out: dict[str, torch.Tensor] = {}
    for name, d in deltas.items():
        s, v = top_spectrum(d, cfg, seed)
        out[f"{name}/directions"], out[f"{name}/singular_values"] = v.contiguous(), s.contiguous()
    for name, tot in totals.items():
        out[f"{name}/expert_usage"] = (tot / max(1, counts[name])).contiguous()
    return out


def measure_run(setup, run_name: str, catalog=None) -> dict[str, Path]:
    """Measure every trained domain of a run whose file is missing; returns ``{domain: file}``.

    Loads the run (:func:`~brainstacks_core.training.trained_run.load_run`) only when a file is
    missing; the file's version covers the domain's stack versions, its validation version and
    the basis settings (module docstring).

    Args:
        setup: the run's :class:`~brainstacks_core.training.config.TrainingSetup`.
        run_name: e.g. ``main``.
        catalog: lineage catalog (dataset lookup), or None.
    """
    from safetensors.torch import save_file

    from brainstacks_core.training.continual import domain_stacks
    from brainstacks_core.training.run import current_run_dir, load_domain_data
    from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss
    from brainstacks_core.training.trained_run import load_run

    ctx, cfg = setup.context, setup.training
    folder = current_run_dir(ctx, run_name)
    manifest = json.loads((folder / "manifest.json").read_text())
    wanted = {}
    for dom in manifest["domains_order"]:
        ids = domain_stacks(manifest, dom)
        if not ids:
            continue
        versions = [r["version"] for r in manifest["domains"][dom]["rounds"] if r["status"] == "frozen"]
        version = content_hash("subspace", ctx.name, run_name, dom, versions, manifest["domains"][dom]["val_version"],
                               cfg.basis, cfg.null_space_val_rows, cfg.sft.max_length, ctx.seed, length=16)
        wanted[dom] = (ids, version, subspace_dir(ctx, run_name) / f"{dom}-{version}.safetensors")
    missing = {d: w for d, w in wanted.items() if not w[2].exists()}
    if missing:
        run = load_run(setup, run_name, catalog)
        model, tok = run["model"], run["tokenizer"]
        pointer = json.loads((folder.parent / "current.json").read_text())
        data_versions = {d: v[0] for d, v in pointer.get("data", {}).items()}
        data = {d.domain: d for d in load_domain_data(ctx, list(missing), catalog, data_versions)}
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        device = next(model.parameters()).device
        for dom, (ids, version, path) in missing.items():
            examples = tokenize_for_loss(tok, data[dom].val.head(cfg.null_space_val_rows), cfg.sft.max_length)
            batches = list(iter_batches(examples, cfg.sft.batch_size, pad, device))
            tensors = measure_domain(model, batches, ids, cfg.basis, seed=ctx.seed)
            with atomic_write(path) as tmp:
                save_file(tensors, str(tmp), metadata={"domain": dom, "run": run_name, "version": version,
                                                       "stack_ids": json.dumps(ids)})
                canonicalize_safetensors(tmp)  # the same bytes in every process
            log.info("subspace %s/%s: %d layers measured -> %s", run_name, dom, len(tensors) // 3, path)
        del run, model
    return {d: w[2] for d, w in wanted.items()}


def load_subspace(path: str | Path) -> dict:
    """Read one domain's file: ``{"domain", "stack_ids", "layers": {layer: {"directions", "singular_values",
    "expert_usage"}}}`` (layers in file order, tensors fp32)."""
    from safetensors import safe_open

    layers: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for key in fh.keys():
            layer, _, part = key.rpartition("/")
            layers.setdefault(layer, {})[part] = fh.get_tensor(key)
    return {"domain": meta.get("domain"), "stack_ids": json.loads(meta.get("stack_ids", "[]")), "layers": layers}


def principal_cosines(va: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the row spaces of ``va [ka, out]`` and ``vb [kb, out]``.

    Returns:
        ``[min(ka, kb)]`` descending, in [0, 1] (singular values of ``va vb^T``).
    """
    if va.shape[0] == 0 or vb.shape[0] == 0:
        return torch.zeros(0)
    return torch.linalg.svdvals(va.double() @ vb.double().T).clamp(0, 1).float()


def block_index(layer: str) -> int | None:
    """Decoder block of a stacked layer's name (``model.layers.3.mlp.up_proj`` -> 3), None if it has none."""
    m = re.search(r"layers\.(\d+)\.", layer)
    return int(m.group(1)) if m else None
