"""The meta-router (paper 3.6): per-domain independent sigmoids over base-only prompt features.

What belongs here: the :class:`MetaRouter` network, the inference post-processing
(chat floor, gate), the :class:`TrainedRouter` wrapper that implements the
evaluation ``Router`` protocol, and saving / loading / cataloguing a router.

Architecture, for features ``[B, T, H]`` and ``D`` domains, width ``W`` (``cfg.hidden``):
token projection ``LayerNorm(H) -> Linear(H, W)``; global context: one learned query
attends over the tokens (``[B, W]``); per-domain context: ``D`` learned queries
cross-attend over the tokens (``[B, D, W]``); fusion MLP on ``[global, domain_d]``
(``Linear(2W, W) -> GELU -> Dropout -> Linear(W, W) -> GELU``); per-domain logit
``<fused_d, w_d> + b_d`` divided by a learned per-domain temperature; independent
sigmoids (not a softmax), so several domains can be on at once.

Parameters at Gemma-3-12B (H=3840, W=512, D=10): projection 1.97M, two attentions
2 x 1.05M, fusion 0.79M, queries/heads 11k: 4.9M parameters, 19.6 MB fp32. Per
call it holds the projected tokens ``[B, T, W]`` (B=16, T=256: 8.4 MB fp32).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from brainstacks_core.files import atomic_write, atomic_write_json, canonical_safetensors, sha256_file
from brainstacks_core.lineage.versioning import code_version, config_hash, content_hash
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.features import prompt_features

log = logging.getLogger(__name__)
WEIGHTS_FILE = "router.safetensors"
META_FILE = "router.json"


class MetaRouter(nn.Module):
    """Outcome-trained sigmoid router.

    Args:
        feature_dim: ``H`` of the base features.
        num_domains: ``D``.
        cfg: ``hidden``, ``heads``, ``dropout``.
    """

    def __init__(self, feature_dim: int, num_domains: int, cfg: RouterConfig) -> None:
        super().__init__()
        w = cfg.hidden
        if w % cfg.heads:
            raise ValueError(f"router hidden {w} is not divisible by heads {cfg.heads}")
        self.feature_dim, self.num_domains = feature_dim, num_domains
        self.proj = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, w))
        self.global_query = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.global_attn = nn.MultiheadAttention(w, cfg.heads, batch_first=True)
        self.domain_queries = nn.Parameter(torch.randn(1, num_domains, w) * 0.02)
        self.domain_attn = nn.MultiheadAttention(w, cfg.heads, batch_first=True)
        self.fusion = nn.Sequential(nn.Linear(2 * w, w), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(w, w),
                                    nn.GELU())
        self.head_weight = nn.Parameter(torch.randn(num_domains, w) * w ** -0.5)
        self.head_bias = nn.Parameter(torch.zeros(num_domains))
        self.log_temperature = nn.Parameter(torch.zeros(num_domains))

    def logits(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-domain logits ``[B, D]`` from features ``[B, T, H]`` and mask ``[B, T]`` (True = token)."""
        x = self.proj(features.to(self.head_weight.dtype))  # (B, T, W)
        pad = ~mask.bool()
        b = x.shape[0]
        g, _ = self.global_attn(self.global_query.expand(b, -1, -1), x, x, key_padding_mask=pad,
                                need_weights=False)  # (B, 1, W)
        d, _ = self.domain_attn(self.domain_queries.expand(b, -1, -1), x, x, key_padding_mask=pad,
                                need_weights=False)  # (B, D, W)
        fused = self.fusion(torch.cat([g.expand(-1, self.num_domains, -1), d], dim=-1))  # (B, D, W)
        raw = (fused * self.head_weight).sum(-1) + self.head_bias  # (B, D)
        return raw / self.log_temperature.exp()

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Independent per-domain probabilities ``[B, D]`` in (0, 1)."""
        return torch.sigmoid(self.logits(features, mask))


def floor_and_gate(weights: torch.Tensor, domains: Sequence[str], cfg: RouterConfig) -> torch.Tensor:
    """Inference weights ``[B, D]``: chat at least ``cfg.chat_floor``, then below ``cfg.gate_threshold`` -> 0.

    The floor applies only when a ``chat`` domain exists; it comes first, so a floor
    below the threshold would be gated off again (the paper's 0.20 > 0.12 keeps chat on).
    """
    w = weights.detach().float().clone()
    if "chat" in domains:
        j = list(domains).index("chat")
        w[:, j] = w[:, j].clamp_min(cfg.chat_floor)
    w[w < cfg.gate_threshold] = 0.0
    return w


class TrainedRouter:
    """A trained :class:`MetaRouter` with its base model: the evaluation ``Router`` protocol.

    Args:
        net: the router network (put in eval mode).
        model: the base model (stacks may be attached: features never use them).
        tokenizer: its tokenizer.
        domains: column order (the curriculum).
        cfg: the profile's ``router:`` section (max length, features, floor, gate).
        version: the router's catalog version.
        metadata: the saved JSON metadata (lineage), if any.
    """

    def __init__(self, net: MetaRouter, model: nn.Module, tokenizer, domains: Sequence[str], cfg: RouterConfig,
                 version: str, metadata: dict | None = None) -> None:
        self.net = net.eval()
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.domains = list(domains)
        self.version = version
        self.metadata = metadata or {}

    @torch.no_grad()
    def probabilities(self, prompts: list[str]) -> torch.Tensor:
        """Raw sigmoid outputs ``[B, D]`` (no floor, no gate), in batches of ``cfg.feature_batch_size``."""
        out = []
        dev = next(self.net.parameters()).device
        for i in range(0, len(prompts), self.cfg.feature_batch_size):
            f, m = prompt_features(self.model, self.tokenizer, prompts[i:i + self.cfg.feature_batch_size], self.cfg)
            out.append(self.net(f.to(dev), m.to(dev)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.domains))

    def domain_weights(self, prompts: list[str]) -> torch.Tensor:
        """Routed weights ``[B, D]``: sigmoids with the chat floor and the gate applied."""
        return floor_and_gate(self.probabilities(list(prompts)), self.domains, self.cfg)


def save_router(folder: str | Path, net: MetaRouter, domains: Sequence[str], cfg: RouterConfig,
                lineage: dict[str, Any], metrics: dict | None = None) -> dict:
    """Write ``router.safetensors`` (weights + metadata header) and ``router.json`` atomically.

    Args:
        folder: destination folder.
        net: the trained network.
        domains: column order.
        cfg: the ``router:`` section it was trained with.
        lineage: ``{"oracle_version", "stack_versions": {stack_id: version}, "base_fingerprint", ...}``.
        metrics: validation figures to keep beside it.

    Returns:
        The metadata dict, with ``version`` (content hash of weights, config, domains, lineage)
        and ``sha256`` of the weights file.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    header = {"feature_dim": str(net.feature_dim), "domains": json.dumps(list(domains))}
    data = canonical_safetensors(save(tensors, metadata=header))  # the same bytes in every process
    path = folder / WEIGHTS_FILE
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    sha = sha256_file(path)
    meta = {"domains": list(domains), "feature_dim": net.feature_dim, "config": cfg.model_dump(mode="json"),
            "lineage": dict(lineage), "metrics": metrics or {}, "sha256": sha, "code_version": code_version()}
    meta["version"] = "router-" + content_hash(sha, meta["config"], meta["domains"], meta["lineage"], length=16)
    atomic_write_json(folder / META_FILE, meta)
    log.info("router %s saved to %s", meta["version"], folder)
    return meta


def load_router(folder: str | Path, expected_sha256: str | None = None) -> tuple[MetaRouter, dict]:
    """Load a saved router; the weights file's sha256 must match its metadata (and ``expected_sha256``).

    Returns:
        ``(net in eval mode, metadata)``.

    Raises:
        ValueError: the checksum differs, or keys are missing / unexpected.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    sha = sha256_file(folder / WEIGHTS_FILE)
    for want in (meta["sha256"], expected_sha256):
        if want is not None and sha != want:
            raise ValueError(f"{folder / WEIGHTS_FILE}: sha256 {sha} differs from the recorded {want}")
    cfg = RouterConfig(**meta["config"])
    net = MetaRouter(int(meta["feature_dim"]), len(meta["domains"]), cfg)
    missing, unexpected = net.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(f"router weights: missing {missing}, unexpected {unexpected}")
    return net.eval(), meta


def load_trained_router(folder: str | Path, model: nn.Module, tokenizer, cfg: RouterConfig | None = None,
                        expected_sha256: str | None = None) -> TrainedRouter:
    """A :class:`TrainedRouter` from a saved folder.

    ``cfg`` may change inference-only keys (``chat_floor``, ``gate_threshold``,
    ``feature_batch_size``); the feature keys must equal the trained ones. The network is
    moved to the base model's device (a GPU worker routes on its GPU).
    """
    net, meta = load_router(folder, expected_sha256)
    trained = RouterConfig(**meta["config"])
    cfg = cfg or trained
    for key in ("max_length", "feature_layer", "feature_mix"):
        if getattr(cfg, key) != getattr(trained, key):
            raise ValueError(f"router trained with {key}={getattr(trained, key)!r}, asked for {getattr(cfg, key)!r}")
    device = next(model.parameters()).device  # the worker's device: the router runs where the base runs
    return TrainedRouter(net.to(device), model, tokenizer, meta["domains"], cfg, meta["version"], meta)


def router_uri(profile_name: str, run_name: str) -> str:
    """``router://<profile>/<run>``."""
    return f"router://{profile_name}/{run_name}"


def record_router(catalog, folder: str | Path, meta: dict, profile_name: str, run_name: str,
                  run_ids: dict | None = None) -> str:
    """Record a saved router in the catalog, its inputs the oracle rows, every stack and the base.

    Returns:
        The router's version.
    """
    lin = meta["lineage"]
    inputs = [v for v in [lin.get("oracle_version"), *dict(lin.get("stack_versions") or {}).values(),
                          lin.get("base_fingerprint")] if v]
    catalog.record_artifact(uri=router_uri(profile_name, run_name), version=meta["version"], kind="router",
                            path=str(Path(folder) / WEIGHTS_FILE), sha256=meta["sha256"],
                            code_version=meta["code_version"], config_hash=config_hash(meta["config"]),
                            inputs=inputs, metadata={"domains": meta["domains"], "metrics": meta["metrics"],
                                                     "lineage": lin}, run_ids=run_ids)
    return meta["version"]
