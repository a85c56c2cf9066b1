"""The continual loop's RL hook: data, lineage and the manifest around :func:`rl.run_rl_stage`.

Called by ``continual._run_locked`` once per domain listed in ``training.rl``, after
the domain's SFT rounds and before the domain is marked done (Algorithm 2, line 4).
It prepares the domain's preference pairs (DPO; a versioned dataset with its
quarantine, ``brainstacks_core.data.preferences``), trains the RL stack, appends it to
the domain's rounds when it is kept (so resume, reuse, routing and the stack store
treat it like any frozen stack) and records its lineage: the stack artifact lists the
preference data version among its inputs, and ``rl://<profile>/<run>/<domain>`` names
the RL result with its upstream (the RL stack, the preference data, the domain's SFT
stacks) and its before/after metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from torch import nn

from brainstacks_core.training.boosting import DomainData, RoundRecord
from brainstacks_core.training.config import TrainingConfig
from brainstacks_core.training.progress import ProgressCallback

log = logging.getLogger(__name__)


def _store_context(ctx) -> Any:
    from brainstacks_core.lineage.context import StoreContext

    return ctx.store or StoreContext(name=ctx.profile, store=ctx.run_dir, repo_root=Path.cwd())


def rl_after_sft(model: nn.Module, tokenizer, data: DomainData, cfg: TrainingConfig, bases, ctx, entry: dict,
                 on_frozen: Callable[[RoundRecord, tuple[str, ...]], None]) -> dict:
    """Run the domain's RL stage; append its round to ``entry["rounds"]``; return the manifest's ``rl`` entry.

    Args:
        model: the injected model with the domain's SFT stacks frozen.
        tokenizer: its tokenizer.
        data: the domain's data.
        cfg: training configuration (``cfg.rl[data.domain]`` is the stage's settings).
        bases: the domain's null-space rows (as in its SFT rounds), or None.
        ctx: the run's ``continual.RunContext``.
        entry: the domain's manifest entry (its ``rounds`` so far).
        on_frozen: ``(record, extra input versions)``: writes and registers the kept stack.
    """
    from brainstacks_core.lineage.versioning import code_version, content_hash
    from brainstacks_core.training.rl import run_rl_stage

    settings = cfg.rl[data.domain]
    sft_stacks = {r["stack_id"]: r["version"] for r in entry["rounds"] if r["status"] == "frozen"}
    pairs, pref_version = None, None
    if settings.method == "dpo":
        from brainstacks_core.data.preferences import prepare_preferences

        prepared = prepare_preferences(_store_context(ctx), data.domain, settings.preferences, ctx.catalog,
                                       ctx.run_ids)
        pairs, pref_version = prepared.pairs, prepared.version
        log.info("%s: %d preference pairs (version %s, %d quarantined)", data.domain, len(pairs), pref_version,
                 len(prepared.quarantine))
    round_index = len(entry["rounds"]) + 1
    extra = (pref_version,) if pref_version else ()
    hook = [ProgressCallback(ctx.progress, data.domain, round_index)] if ctx.progress else None
    rec, rl = run_rl_stage(model, tokenizer, data, round_index, cfg, settings, bases,
                           lambda _sid, r: on_frozen(r, extra), pairs=pairs, callbacks=hook)
    entry["rounds"].append(rec.to_dict())
    rl.update(version=rec.version, preference_version=pref_version, sft_stacks=sft_stacks,
              upstream=[v for v in [rec.version, pref_version, data.train_version] if v] + sorted(sft_stacks.values()))
    if ctx.catalog is not None:
        version = content_hash("rl", ctx.profile, ctx.run_name, data.domain, rl["upstream"], rl["status"],
                               rl["before"], rl["after"])
        ctx.catalog.record_artifact(uri=f"rl://{ctx.profile}/{ctx.run_name}/{data.domain}", version=version,
                                    kind="rl", path=rec.file, sha256=rec.file_sha256, code_version=code_version(),
                                    config_hash=content_hash(settings), inputs=rl["upstream"], metadata=rl,
                                    run_ids=ctx.run_ids)
        for when in ("before", "after"):
            for key, value in rl[when].items():
                ctx.catalog.record_metric(version, f"{when}/{key}", value)
        rl["artifact_version"] = version
    return rl
