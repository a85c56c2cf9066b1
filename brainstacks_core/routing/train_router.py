"""Training the meta-router on oracle targets, with its baselines on the same split (paper 3.6).

What belongs here: the split by unique prompt, the loss (BCE + confidence margin),
the training loop (AdamW, cosine schedule, best checkpoint by composite score) and
:func:`fit_router`, which runs features -> split -> router -> label router and
linear probe -> metrics.

Input: the oracle's frame (``record_id, source_domain, prompt, answer, base_loss,
oracle_loss`` and per domain ``oracle_<d>`` (0 / 0.5 / 1) and ``target_<d>`` (80/20
blend with the label)). The router trains on ``target_<d>``; it is scored against
``oracle_<d> > 0``.

Loss: ``BCE(p, target) + margin_weight * mean(relu(m - s * (p - 0.5)))`` over the
entries whose target is clear (``|target - 0.5| >= 0.25``; ``s = sign(target - 0.5)``,
``m = confidence_margin``): it pushes clear decisions past ``0.5 +- m`` and leaves
soft-boosted targets (0.4 / 0.6 after the blend) to BCE alone.

Checkpoint: the epoch with the best score on the validation prompts, by
``router.checkpoint_score``: ``paper`` (3.6: ``0.50 single_top1 + 0.35 mixed_set_match
- 0.15 val BCE``, :func:`~brainstacks_core.routing.metrics.paper_score`) or
``auroc_f1`` (``mean AUROC + mean F1 - val BCE``,
:func:`~brainstacks_core.routing.metrics.composite_score`). Both are in the history.

Routed loss for the gain-recovered figure comes from a caller-supplied
``loss_under(rows, weights) -> [B]``: ``rows`` the evaluated frame rows (B of them,
in order), ``weights [B, D]`` the inference weights (chat floor and gate applied)
in ``domains`` order; the oracle's per-row machinery computes it.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainstacks_core.routing.baselines import label_weights, train_linear_probe
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.features import all_features, feature_dim, mean_pool
from brainstacks_core.routing.metrics import (
    composite_score,
    gain_recovered,
    paper_score,
    per_domain_metrics,
    set_metrics,
)
from brainstacks_core.routing.router import MetaRouter, floor_and_gate

log = logging.getLogger(__name__)
LossUnder = Callable[[pd.DataFrame, torch.Tensor], torch.Tensor]
ProgressCb = Callable[[dict], None]


def split_by_prompt(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positional ``(train_idx, val_idx)``: every row of one prompt text lands on the same side.

    The unique prompts are shuffled by ``seed`` and the first ``ceil(val_fraction * U)``
    go to validation (at least one prompt on each side).
    """
    uniq = sorted(frame["prompt"].astype(str).unique())
    if len(uniq) < 2:
        raise ValueError(f"need at least 2 unique prompts to split, got {len(uniq)}")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    n_val = min(max(1, math.ceil(val_fraction * len(uniq))), len(uniq) - 1)
    val_prompts = {uniq[i] for i in perm[:n_val]}
    is_val = frame["prompt"].astype(str).isin(val_prompts).to_numpy()
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def frame_targets(frame: pd.DataFrame, domains: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target [N, D], oracle [N, D])`` from the ``target_<d>`` / ``oracle_<d>`` columns."""
    t = torch.tensor(frame[[f"target_{d}" for d in domains]].to_numpy(dtype=np.float32))
    o = torch.tensor(frame[[f"oracle_{d}" for d in domains]].to_numpy(dtype=np.float32))
    return t, o


def router_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: RouterConfig) -> torch.Tensor:
    """BCE on the logits plus the confidence-margin term (module docstring). ``[B, D]`` each."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    if cfg.margin_weight == 0:
        return bce
    clear = (targets - 0.5).abs() >= 0.25
    if not bool(clear.any()):
        return bce
    s = torch.sign(targets - 0.5)
    hinge = torch.relu(cfg.confidence_margin - s * (torch.sigmoid(logits) - 0.5))
    return bce + cfg.margin_weight * hinge[clear].mean()


def _cosine(total: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


@torch.no_grad()
def predict(net: MetaRouter, features: torch.Tensor, mask: torch.Tensor, batch_size: int = 64,
            index: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities ``[N, D]`` in eval mode, for ``features[index]`` (all rows when ``index`` is None)."""
    net.eval()
    dev = next(net.parameters()).device
    index = torch.arange(features.shape[0]) if index is None else torch.as_tensor(index, dtype=torch.long)
    out = [net(features[i].to(dev), mask[i].to(dev)).float().cpu() for i in index.split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, net.num_domains)


@dataclass
class TrainResult:
    """The best checkpoint and the per-epoch history (``epoch, train_loss, val_bce, mean_auroc, mean_f1,
    single_top1, mixed_set_match, score_paper, score_auroc_f1, score`` (the one ``checkpoint_score`` picks))."""

    net: MetaRouter
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)


def train_meta_router(features: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, oracle: torch.Tensor,
                      train_idx: np.ndarray, val_idx: np.ndarray, domains: Sequence[str], cfg: RouterConfig,
                      progress_cb: ProgressCb | None = None, device: str | torch.device = "cpu",
                      progress: bool = True, prompt_index: torch.Tensor | None = None) -> TrainResult:
    """Train a :class:`MetaRouter` (AdamW, cosine LR over every step, best epoch by composite score).

    Args:
        features, mask: ``[U, T, H]`` / ``[U, T]`` base features of every unique prompt.
        prompt_index: ``[N]`` row -> its prompt's feature row (identity when None, ``U = N``), so
            rows sharing a prompt share one feature tensor (no copy per row).
        targets: blended targets ``[N, D]``; oracle: oracle weights ``[N, D]`` (metrics).
        train_idx, val_idx: positional rows (:func:`split_by_prompt`).
        domains: column order.
        cfg: router hyper-parameters.
        progress_cb: called after each epoch with that epoch's history row.
        device: where the router trains (features move there one batch at a time).
    """
    with torch.random.fork_rng(devices=[]):  # seeded init and dropout; the caller's RNG is untouched
        torch.manual_seed(cfg.seed)
        return _train(features, mask, targets, oracle, train_idx, val_idx, domains, cfg, progress_cb, device,
                      progress, torch.arange(len(targets)) if prompt_index is None else prompt_index)


def _train(features, mask, targets, oracle, train_idx, val_idx, domains, cfg, progress_cb, device,
           progress, prompt_index) -> TrainResult:
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(cfg.seed)
    net = MetaRouter(features.shape[-1], len(domains), cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(cfg.epochs * steps_per_epoch))
    tr = torch.as_tensor(train_idx, dtype=torch.long)
    va = torch.as_tensor(val_idx, dtype=torch.long)
    best: tuple[float, int, dict] | None = None
    history: list[dict] = []
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="router", unit="epoch", disable=not progress):
        net.train()
        total, seen = 0.0, 0
        for chunk in tr[torch.randperm(len(tr), generator=gen)].split(cfg.batch_size):
            fi = prompt_index[chunk]
            logits = net.logits(features[fi].to(device), mask[fi].to(device))
            loss = router_loss(logits, targets[chunk].to(device), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(chunk)
            seen += len(chunk)
        p = predict(net, features, mask, index=prompt_index[va])
        val_bce = float(nn.functional.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), targets[va]))
        m = per_domain_metrics(p, oracle[va], domains, cfg.decision_threshold)
        sm = set_metrics(p, oracle[va], cfg.decision_threshold)
        scores = {"paper": paper_score(sm, val_bce), "auroc_f1": composite_score(m, val_bce)}
        score = scores[cfg.checkpoint_score]
        row = {"epoch": epoch, "train_loss": total / max(seen, 1), "val_bce": val_bce,
               "mean_auroc": m["mean_auroc"], "mean_f1": m["mean_f1"], "single_top1": sm["single_top1"],
               "mixed_set_match": sm["mixed_set_match"], "score_paper": scores["paper"],
               "score_auroc_f1": scores["auroc_f1"], "score": score, "lr": sched.get_last_lr()[0]}
        history.append(row)
        log.info("router epoch %d: train %.4f val bce %.4f auroc %.3f f1 %.3f score %.3f", epoch,
                 row["train_loss"], val_bce, m["mean_auroc"], m["mean_f1"], score)
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(net.state_dict()))
        if progress_cb is not None:
            progress_cb(row)
    assert best is not None
    net.load_state_dict(best[2])
    return TrainResult(net=net.eval(), best_epoch=best[1], best_score=best[0], history=history)


def evaluate_weights(rows: pd.DataFrame, weights: torch.Tensor, domains: Sequence[str], cfg: RouterConfig,
                     loss_under: LossUnder | None = None) -> dict:
    """Metrics of one router's raw weights ``[B, D]`` on ``rows`` (the validation frame).

    AUROC / F1 use the raw weights; the routed loss uses the inference weights
    (:func:`~brainstacks_core.routing.router.floor_and_gate`).

    Returns:
        :func:`per_domain_metrics` plus ``gain_recovered`` and ``routed_loss`` (mean)
        when ``loss_under`` is given.
    """
    _, oracle = frame_targets(rows, domains)
    out = per_domain_metrics(weights, oracle, domains, cfg.decision_threshold)
    if loss_under is not None:
        routed = torch.as_tensor(loss_under(rows, floor_and_gate(weights, domains, cfg))).double().flatten()
        base = torch.tensor(rows["base_loss"].to_numpy(dtype=np.float64))
        orc = torch.tensor(rows["oracle_loss"].to_numpy(dtype=np.float64))
        out["gain_recovered"] = gain_recovered(base, orc, routed)
        out["routed_loss"] = float(routed.mean())
        out["base_loss"], out["oracle_loss"] = float(base.mean()), float(orc.mean())
    return out


@dataclass
class RouterFit:
    """Everything :func:`fit_router` produced.

    Attributes:
        net: the best router checkpoint.
        train_idx, val_idx: the split (positional rows of the input frame).
        report: ``{"router": metrics, "label": metrics, "probe": metrics, "best_epoch", "history"}``.
        val_weights: raw validation weights per method, ``{"router" | "label" | "probe": [V, D]}``.
    """

    net: MetaRouter
    train_idx: np.ndarray
    val_idx: np.ndarray
    report: dict
    val_weights: dict[str, torch.Tensor]


def fit_router(frame: pd.DataFrame, domains: Sequence[str], model: nn.Module, tokenizer, cfg: RouterConfig,
               loss_under: LossUnder | None = None, progress_cb: ProgressCb | None = None,
               device: str | torch.device = "cpu", feature_dtype: torch.dtype = torch.float32,
               progress: bool = True) -> RouterFit:
    """Features (base only) -> split by prompt -> router, label router, linear probe -> metrics on val.

    Features are computed once per unique prompt and held on the host
    (:func:`~brainstacks_core.routing.features.all_features` gives the bytes).
    """
    domains = list(domains)
    frame = frame.reset_index(drop=True)
    if feature_dim(model) <= 0:
        raise ValueError("model has no hidden size")
    uniq = list(dict.fromkeys(frame["prompt"].astype(str)))
    feats_u, mask_u = all_features(model, tokenizer, uniq, cfg, dtype=feature_dtype, progress=progress)
    pos = {p: i for i, p in enumerate(uniq)}
    rows = torch.tensor([pos[p] for p in frame["prompt"].astype(str)], dtype=torch.long)
    targets, oracle = frame_targets(frame, domains)
    train_idx, val_idx = split_by_prompt(frame, cfg.val_fraction, cfg.seed)
    res = train_meta_router(feats_u, mask_u, targets, oracle, train_idx, val_idx, domains, cfg, progress_cb,
                            device=device, progress=progress, prompt_index=rows)
    val = frame.iloc[val_idx].reset_index(drop=True)
    pooled = torch.cat([mean_pool(feats_u[i:i + 256].float(), mask_u[i:i + 256])  # (U, H), fp32 per chunk
                        for i in range(0, len(uniq), 256)])[rows]  # (N, H)
    probe = train_linear_probe(pooled[train_idx], targets[train_idx], seed=cfg.seed)
    with torch.no_grad():
        weights = {"router": predict(res.net, feats_u, mask_u, index=rows[val_idx]),
                   "label": label_weights(list(val["source_domain"]), domains),
                   "probe": probe(pooled[val_idx])}
    report = {name: evaluate_weights(val, w, domains, cfg, loss_under) for name, w in weights.items()}
    report.update(best_epoch=res.best_epoch, best_score=res.best_score, history=res.history,
                  n_train=len(train_idx), n_val=len(val_idx), domains=domains)
    log.info("router val AUROC %.3f (label %.3f, probe %.3f)", report["router"]["mean_auroc"],
             report["label"]["mean_auroc"], report["probe"]["mean_auroc"])
    return RouterFit(net=res.net, train_idx=train_idx, val_idx=val_idx, report=report, val_weights=weights)
