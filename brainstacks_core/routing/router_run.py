"""One router-training step end to end: fit, save, report, heatmap, catalog (what a task calls).

What belongs here: :func:`train_and_save_router`, idempotent on its inputs. The
router folder is keyed by the content hash of (router config, domains, lineage,
code version): a re-run with the same oracle rows, stacks and base finds the
saved router and trains nothing.

Folder contents: ``router.safetensors`` + ``router.json`` (:func:`~brainstacks_core.routing.router.save_router`),
``report.json`` (router / label router / linear probe metrics on the validation
prompts, per-epoch history) and ``routing_heatmap.png`` (validation prompts' source
domain x stack domain, mean inference weight).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from brainstacks_core.files import atomic_write_json
from brainstacks_core.lineage.versioning import code_version, content_hash
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.router import (
    META_FILE,
    floor_and_gate,
    load_trained_router,
    record_router,
    save_router,
)
from brainstacks_core.routing.train_router import LossUnder, ProgressCb, fit_router

log = logging.getLogger(__name__)


def router_key(cfg: RouterConfig, domains: Sequence[str], lineage: dict) -> str:
    """Content key of a router's inputs (config, domains, lineage, code version)."""
    return content_hash(cfg, list(domains), lineage, code_version(), length=16)


def summary(report: dict) -> dict:
    """Headline figures per method: mean AUROC, mean F1, gain recovered (when measured)."""
    return {name: {k: report[name].get(k) for k in ("mean_auroc", "mean_f1", "gain_recovered")}
            for name in ("router", "label", "probe")}


def train_and_save_router(frame: pd.DataFrame, domains: Sequence[str], model: nn.Module, tokenizer,
                          cfg: RouterConfig, root: str | Path, lineage: dict, *, catalog=None,
                          profile_name: str | None = None, run_name: str | None = None,
                          loss_under: LossUnder | None = None, progress_cb: ProgressCb | None = None,
                          device: str | torch.device = "cpu", run_ids: dict | None = None) -> dict:
    """Train (or reuse) the run's router under ``root/<key>/`` and record it.

    Args:
        frame: the oracle's rows (see :mod:`brainstacks_core.routing.train_router`).
        domains: curriculum order.
        model, tokenizer: the base (stacks attached or not; features use none).
        cfg: the profile's ``router:`` section.
        root: folder holding one sub-folder per router key.
        lineage: ``{"oracle_version", "stack_versions", "base_fingerprint"}``.
        catalog: when given with ``profile_name`` and ``run_name``, the router is
            recorded as ``router://<profile>/<run>``.
        loss_under: per-row routed loss (gain recovered); optional.

    Returns:
        ``{"version", "folder", "reused", "summary", "report", "heatmap", "router"}``
        (``router`` a :class:`~brainstacks_core.routing.router.TrainedRouter`).
    """
    from brainstacks_core.reporting.routing_plots import plot_routing_heatmap

    folder = Path(root) / router_key(cfg, domains, lineage)
    reused = (folder / META_FILE).exists() and (folder / "report.json").exists()
    if reused:
        meta = json.loads((folder / META_FILE).read_text())
        report = json.loads((folder / "report.json").read_text())
        log.info("router %s reused from %s", meta["version"], folder)
    else:
        fit = fit_router(frame, domains, model, tokenizer, cfg, loss_under=loss_under, progress_cb=progress_cb,
                         device=device)
        report = fit.report
        val = frame.reset_index(drop=True).iloc[fit.val_idx]
        plot_routing_heatmap(list(val["source_domain"]), floor_and_gate(fit.val_weights["router"], domains, cfg),
                             list(domains), folder / "routing_heatmap.png",
                             title="validation prompts: mean routed weight")
        atomic_write_json(folder / "report.json", report)
        meta = save_router(folder, fit.net, domains, cfg, lineage, metrics=summary(report))
    if catalog is not None and profile_name and run_name:
        record_router(catalog, folder, meta, profile_name, run_name, run_ids=run_ids)
    router = load_trained_router(folder, model, tokenizer, cfg, expected_sha256=meta["sha256"])
    return {"version": meta["version"], "folder": str(folder), "reused": reused, "summary": summary(report),
            "report": report, "heatmap": str(folder / "routing_heatmap.png"), "router": router}
