"""Outer loop: domains in curriculum order on top of frozen stacks (section 3.4).

For each domain: null-space bases from the PREVIOUS domains' validation data
(section 3.5; K directions per earlier domain, from its own stacks), boosting
rounds (``boosting.train_round``, decided on the validation split), then a row of
the forgetting matrix on every trained domain's held-out test split (isolated,
as trained, ungated, base; the as-trained validation loss is checked against the
training-time loss). A manifest is written atomically after every round, so a run
killed at any point resumes at the round where it stopped; finished rounds are
re-attached from their stack files (checksums verified), never retrained.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from brainstacks_core.files import atomic_write_json
from brainstacks_core.lineage.versioning import code_version, config_hash, content_hash
from brainstacks_core.stacks.inject import only_stacks, stack_ids
from brainstacks_core.stacks.moe_lora import MoELoRAConfig
from brainstacks_core.stacks.null_space import compute_bases, load_bases, save_bases
from brainstacks_core.stacks.stack_io import attach_stack, load_stack, save_stack, stack_tensors, tensor_checksum
from brainstacks_core.training.boosting import DomainData, RoundRecord, should_continue, train_round
from brainstacks_core.training.config import TrainingConfig
from brainstacks_core.training.loss import completion_loss
from brainstacks_core.training.repair import RunInconsistentError, verify_round
from brainstacks_core.training.run_lock import run_lock
from brainstacks_core.training.sft_data import iter_batches, tokenize_for_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Where a continual run writes, and what it records lineage against.

    Attributes:
        profile: profile name (part of URIs).
        run_name: distinguishes runs of one profile (e.g. "main", "no-null-space").
        run_dir: folder of the manifest, stack files and bases.
        base_fingerprint: fingerprint of the base model.
        base_version: catalog version of the base artifact ("" if not registered).
        catalog: a ``brainstacks_core.lineage.catalog.Catalog`` or None.
        run_ids: orchestration run ids to store with artifacts (Prefect flow run).
        domain_keys: chained key per domain (``run.domain_keys``), stored in the manifest.
        progress: called with ``{"domain", "round", "step", "max_steps", "val_loss", "stage"}``
            during training (the flows turn it into a Prefect progress artifact).
        on_busy: ``"wait"`` or ``"skip"`` when another process holds the run folder.
        lock_timeout_s: with ``"wait"``, give up after this many seconds.
        store: the profile's ``StoreContext``: where RL preference data is prepared (None: under run_dir).
    """

    profile: str
    run_name: str
    run_dir: Path
    base_fingerprint: str
    base_version: str = ""
    catalog: Any = None
    run_ids: dict | None = None
    domain_keys: dict | None = None
    progress: Callable[[dict], None] | None = None
    on_busy: str = "wait"
    lock_timeout_s: float | None = None
    store: Any = None  # the profile's lineage.context.StoreContext (RL preference data); None: under run_dir

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"


def _read_manifest(ctx: RunContext, cfg_hash: str, order: list[str]) -> dict:
    import json

    fresh = {"profile": ctx.profile, "run": ctx.run_name, "base_fingerprint": ctx.base_fingerprint,
             "config_hash": cfg_hash, "domains_order": order, "domains": {}, "forgetting": []}
    if not ctx.manifest_path.exists():
        return fresh
    m = json.loads(ctx.manifest_path.read_text())
    for key in ("base_fingerprint", "config_hash"):
        if m.get(key) != fresh[key]:
            raise ValueError(f"{ctx.manifest_path}: {key} {m.get(key)!r} differs from this run's {fresh[key]!r}; "
                             f"the run's settings changed: start a new run name or delete {ctx.run_dir}")
    started = [d for d in m["domains_order"] if d in m["domains"]]
    n = min(len(order), len(started))
    if order[:n] != started[:n]:
        raise ValueError(f"{ctx.manifest_path}: domains {started} were trained in that order; the curriculum "
                         f"{order} must agree with it (a later domain may be added at the end)")
    if len(order) >= len(m["domains_order"]):
        m["domains_order"] = order
    return m


def _write_manifest(ctx: RunContext, manifest: dict) -> None:
    check = getattr(ctx.catalog, "check_fence", None)
    if check is not None:  # a shared catalog's lock: refuse to publish under a stale epoch
        check()
    manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(ctx.manifest_path, manifest)


def _stack_versions(manifest: dict) -> dict[str, str]:
    return {r["stack_id"]: r["version"] for d in manifest["domains"].values()
            for r in d["rounds"] if r["status"] == "frozen"}


def _reattach(model: nn.Module, ctx: RunContext, manifest: dict) -> None:
    """Attach every frozen round of the manifest, verifying its file checksum."""
    present = set(stack_ids(model))
    for dom in manifest["domains_order"]:
        for r in manifest["domains"].get(dom, {}).get("rounds", []):
            if r["status"] != "frozen" or r["stack_id"] in present:
                continue
            problem = verify_round(r)
            if problem:
                raise RunInconsistentError(ctx.run_dir, dom, r["round"], problem)
            sf = load_stack(r["file"], base_fingerprint=ctx.base_fingerprint)
            attach_stack(model, sf)
            log.info("resume: re-attached %s from %s", r["stack_id"], r["file"])


def finished_run(data: list[DomainData], cfg: TrainingConfig, moe: MoELoRAConfig, ctx: RunContext) -> dict | None:
    """The manifest when every domain of ``data`` is done in ``ctx``'s folder on these inputs, else None.

    What a run with nothing to train checks, without loading a model: the manifest's
    base, settings and curriculum order agree with this run (the errors of
    :func:`run_continual`), each domain's data versions and chain key match, and every
    frozen round's file matches its recorded sha256 (:func:`~brainstacks_core.training.repair.verify_round`,
    the check :func:`run_continual` makes before re-attaching). Under the run folder's lock.

    Raises:
        RunInconsistentError: a frozen stack file is missing or differs from the manifest.
        ValueError: the folder was trained on other settings or in another curriculum order.
    """
    if not ctx.manifest_path.exists():
        return None
    order = [d.domain for d in data]
    with run_lock(ctx.run_dir, ctx.on_busy, ctx.lock_timeout_s, what=f"run {ctx.profile}/{ctx.run_name}"):
        manifest = _read_manifest(ctx, run_config_hash(cfg, moe), order)
        for d in data:
            entry = manifest["domains"].get(d.domain)
            if entry is None or entry.get("status") != "done":
                return None
            if (entry["train_version"], entry["val_version"]) != (d.train_version, d.val_version):
                return None  # run_continual names the conflict
            key = (ctx.domain_keys or {}).get(d.domain)
            if key is not None and entry.get("chain_key") != key:
                return None
        for dom in manifest["domains_order"]:
            for r in manifest["domains"].get(dom, {}).get("rounds", []):
                problem = verify_round(r)
                if problem:
                    raise RunInconsistentError(ctx.run_dir, dom, r["round"], problem)
    log.info("run %s/%s: %s done in the manifest, every stack file verified: nothing to train", ctx.profile,
             ctx.run_name, ", ".join(order))
    return manifest


def run_config_hash(cfg: TrainingConfig, moe: MoELoRAConfig) -> str:
    """Hash of the settings a run folder is tied to (the curriculum and ablation flag excluded)."""
    return config_hash({"training": cfg.model_copy(update={"domains": None, "ablation": True}), "moe": moe})


def domain_stacks(manifest: dict, domain: str) -> list[str]:
    return [r["stack_id"] for r in manifest["domains"].get(domain, {}).get("rounds", []) if r["status"] == "frozen"]


def training_time_loss(manifest: dict, domain: str) -> float | None:
    """The validation loss the domain ended training with (its last kept round, else its start)."""
    rounds = manifest["domains"].get(domain, {}).get("rounds", [])
    kept = [r for r in rounds if r["status"] == "frozen"]
    if kept:
        return kept[-1]["loss_after"]
    return rounds[0]["loss_before"] if rounds else None


def as_trained_stacks(manifest: dict, domain: str) -> list[str]:
    """The stacks active while ``domain`` trained: its own and every earlier domain's."""
    order = manifest["domains_order"]
    return [s for d in order[:order.index(domain) + 1] for s in domain_stacks(manifest, d)]


def forgetting_row(model, tokenizer, manifest: dict, data: dict[str, DomainData], after: str,
                   cfg: TrainingConfig) -> list[dict]:
    """Loss of every trained domain on its held-out test split, in four modes.

    Modes: ``isolated`` (its own stacks), ``as_trained`` (the stacks active while it
    trained: its own and every earlier domain's), ``ungated`` (all stacks) and
    ``base`` (none). The as-trained loss on the validation rows is checked against
    the training-time loss (frozen stacks are read-only, so it must be equal).

    Raises:
        RuntimeError: the as-trained validation loss differs from the training-time one.
    """
    rows = []
    loss = lambda df: completion_loss(model, tokenizer, df, cfg.sft.max_length, cfg.sft.batch_size)  # noqa: E731
    for dom in manifest["domains_order"]:
        if dom not in manifest["domains"] or dom not in data:
            continue
        d = data[dom]
        split = "test" if d.test is not None and len(d.test) else "val"
        df = d.test if split == "test" else d.val
        df = df if cfg.eval_rows is None else df.head(cfg.eval_rows)
        val = d.val if cfg.eval_rows is None else d.val.head(cfg.eval_rows)
        trained_with = as_trained_stacks(manifest, dom)
        with only_stacks(model, trained_with):
            as_trained_val = loss(val)
            as_trained = loss(df)
        want = training_time_loss(manifest, dom)
        if want is not None and abs(as_trained_val - want) > 1e-6 * max(1.0, abs(want)):
            raise RuntimeError(f"{dom}: loss with the stacks it trained with is {as_trained_val:.6f} after "
                               f"{after}, but it ended training at {want:.6f}: a frozen stack changed")
        with only_stacks(model, domain_stacks(manifest, dom)):
            iso = loss(df)
        with only_stacks(model, None):
            ung = loss(df)
        with only_stacks(model, []):
            base = loss(df)
        rows.append({"after": after, "domain": dom, "split": split, "isolated": iso, "as_trained": as_trained,
                     "ungated": ung, "base": base, "as_trained_val": as_trained_val})
    return rows


def run_continual(model: nn.Module, tokenizer, data: list[DomainData], cfg: TrainingConfig, moe: MoELoRAConfig,
                  ctx: RunContext) -> dict:
    """Train every domain in order (resuming from the manifest) and return the manifest.

    Args:
        model: the base with stacks injected (no stacks yet, or stacks of this run).
        tokenizer: its tokenizer.
        data: domains in curriculum order.
        cfg: training configuration.
        moe: MoE-LoRA configuration.
        ctx: where to write and what to record.
    """
    with run_lock(ctx.run_dir, ctx.on_busy, ctx.lock_timeout_s, what=f"run {ctx.profile}/{ctx.run_name}",
                  catalog=ctx.catalog, key=f"training/{ctx.run_name}/{ctx.run_dir.name}") as lease:
        if not isinstance(lease, Path):  # an advisory lock: every publish is fenced by its epoch
            ctx = replace(ctx, catalog=ctx.catalog.fenced(lease))
        return _run_locked(model, tokenizer, data, cfg, moe, ctx)


def _progress(ctx: RunContext, **info: Any) -> None:
    if ctx.progress is not None:
        try:
            ctx.progress(info)
        except Exception:  # noqa: BLE001 - a UI hook must never stop training
            log.exception("progress hook failed (ignored)")


def _run_locked(model: nn.Module, tokenizer, data: list[DomainData], cfg: TrainingConfig, moe: MoELoRAConfig,
                ctx: RunContext) -> dict:
    order = [d.domain for d in data]
    by_name = {d.domain: d for d in data}
    cfg_hash = run_config_hash(cfg, moe)
    manifest = _read_manifest(ctx, cfg_hash, order)
    _reattach(model, ctx, manifest)
    for i, d in enumerate(data):
        entry = manifest["domains"].setdefault(d.domain, {
            "status": "training", "rounds": [], "train_version": d.train_version, "val_version": d.val_version})
        if (entry["train_version"], entry["val_version"]) != (d.train_version, d.val_version):
            raise ValueError(f"{ctx.manifest_path}: {d.domain} was trained on data {entry['train_version']}/"
                             f"{entry['val_version']}, now {d.train_version}/{d.val_version}: a run folder holds "
                             f"one data version; train into a new folder")
        key = (ctx.domain_keys or {}).get(d.domain)
        if key is not None:
            if entry.setdefault("chain_key", key) != key:
                raise ValueError(f"{ctx.manifest_path}: {d.domain} has chain key {entry['chain_key']}, this run "
                                 f"{key}: the base, settings or an earlier domain changed; train into a new folder")
        if entry["status"] == "done":
            log.info("%s: done in manifest, skipped", d.domain)
            continue
        bases, ns_version = _bases_for(model, tokenizer, data[:i], d.domain, cfg, ctx, manifest, entry)
        dcfg = cfg.for_domain(d.domain)  # training.per_domain: this domain's steps, rounds, learning rate
        next_round = len(entry["rounds"]) + 1
        go = (not entry["rounds"] or should_continue(RoundRecord(**entry["rounds"][-1]), next_round - 1, dcfg)[0]) \
            and "rl" not in entry  # the RL stack (if any) comes after the last SFT round
        while go:
            parents = _stack_versions(manifest)

            def on_frozen(stack_id: str, rec: RoundRecord, _d=d, _parents=parents, _ns=ns_version) -> None:
                _save_and_register(model, ctx, _d, rec, _parents, _ns, cfg_hash)

            _progress(ctx, stage="train", domain=d.domain, round=next_round, step=0, max_steps=dcfg.sft.max_steps,
                      val_loss=None)
            from brainstacks_core.training.progress import ProgressCallback  # transformers.Trainer: lazily

            hook = [ProgressCallback(ctx.progress, d.domain, next_round)] if ctx.progress else None
            rec = train_round(model, tokenizer, d, next_round, dcfg, moe, bases, on_frozen, callbacks=hook)
            _progress(ctx, stage="round done", domain=d.domain, round=next_round, step=dcfg.sft.max_steps,
                      max_steps=dcfg.sft.max_steps, val_loss=rec.loss_after, status=rec.status)
            entry["rounds"].append(rec.to_dict())
            go, why = should_continue(rec, next_round, dcfg)
            entry["stop_reason"] = None if go else why
            _write_manifest(ctx, manifest)
            next_round += 1
        if d.domain in cfg.rl and "rl" not in entry:  # per-domain RL (paper 6.2): a fresh active stack, frozen after
            from brainstacks_core.training.rl_stage import rl_after_sft

            def on_rl_frozen(rec: RoundRecord, extra: tuple[str, ...], _d=d, _p=_stack_versions(manifest),
                             _ns=ns_version) -> None:
                _save_and_register(model, ctx, _d, rec, _p, _ns, cfg_hash, extra)

            entry["rl"] = rl_after_sft(model, tokenizer, d, cfg, bases, ctx, entry, on_rl_frozen)
            _write_manifest(ctx, manifest)
        rows = forgetting_row(model, tokenizer, manifest, by_name, d.domain, cfg)
        manifest["forgetting"] = [r for r in manifest["forgetting"] if r["after"] != d.domain] + rows
        entry["status"] = "done"
        _write_manifest(ctx, manifest)
        _record_forgetting(ctx, manifest, d.domain, rows, by_name)
    return manifest


def _bases_for(model, tokenizer, previous: list[DomainData], domain: str, cfg: TrainingConfig, ctx: RunContext,
               manifest: dict, entry: dict) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    if not cfg.null_space or not previous or not stack_ids(model):
        return None, None
    if entry.get("null_space"):
        ns = entry["null_space"]
        if Path(ns["file"]).exists():
            bases = load_bases(ns["file"])
            if tensor_checksum(bases) != ns["tensor_sha256"]:
                raise ValueError(f"{ns['file']}: null-space bases differ from the manifest's checksum "
                                 f"{ns['tensor_sha256'][:12]}: the file was replaced")
            return bases, ns["version"]
        log.warning("%s: null-space file missing; recomputing it from the same frozen stacks and data", ns["file"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device

    earlier = [p for p in previous if domain_stacks(manifest, p.domain)]
    # per_domain: null_space_val_rows of each earlier domain; joint: the paper's nsamples in total, split evenly
    rows_each = cfg.null_space_val_rows if cfg.basis.combine == "per_domain" else \
        -(-cfg.null_space_val_rows // max(1, len(earlier)))

    def batches(p: DomainData):  # lazily: one domain's batches at a time
        examples = tokenize_for_loss(tokenizer, p.val.head(rows_each), cfg.sft.max_length)
        return iter_batches(examples, cfg.sft.batch_size, pad, device)

    # per_domain: K directions per earlier domain, its own frozen stacks on its own validation rows;
    # joint: compute_bases runs one SVD over all of them with all their stacks on
    groups = [(domain_stacks(manifest, p.domain), batches(p)) for p in earlier]
    bases = compute_bases(model, groups, cfg.basis, seed=cfg.seed)
    parents = _stack_versions(manifest)
    inputs = [p.val_version for p in previous] + sorted(parents.values())
    version = content_hash("null_space", ctx.profile, ctx.run_name, inputs, cfg.basis,
                           cfg.null_space_val_rows)
    path = ctx.run_dir / "null_space" / f"{domain}-{version}.safetensors"
    checksum = save_bases(path, bases, {"domain": domain, "version": version, "code_version": code_version(),
                                        "inputs": ",".join(inputs)})
    entry["null_space"] = {"file": str(path), "version": version, "tensor_sha256": checksum,
                           "directions": {n: int(b.shape[0]) for n, b in bases.items()}}
    _write_manifest(ctx, manifest)
    if ctx.catalog is not None:
        from brainstacks_core.files import sha256_file

        ctx.catalog.record_artifact(uri=f"nullspace://{ctx.profile}/{ctx.run_name}/{domain}", version=version,
                                    kind="null_space", path=str(path), sha256=sha256_file(path),
                                    code_version=code_version(), config_hash=config_hash(cfg.basis),
                                    inputs=inputs, run_ids=ctx.run_ids,  # the file is the row's path (a URI
                                    # on an object store): no host path in the metadata
                                    metadata={k: v for k, v in entry["null_space"].items() if k != "file"})
    return bases, version


def _save_and_register(model, ctx: RunContext, d: DomainData, rec: RoundRecord, parents: dict[str, str],
                       ns_version: str | None, cfg_hash: str, extra_inputs: tuple[str, ...] = ()) -> None:
    inputs = [d.train_version, d.val_version] + ([ctx.base_version] if ctx.base_version else []) \
        + ([ns_version] if ns_version else []) + sorted(parents.values()) + list(extra_inputs)
    tensors_sha = tensor_checksum(stack_tensors(model, rec.stack_id)[0])
    rec.version = content_hash("stack", ctx.profile, ctx.run_name, tensors_sha, inputs)
    # the version is in the file name: a round retrained after a crash never overwrites a registered file
    path = ctx.run_dir / "stacks" / d.domain / f"{rec.stack_id}-{rec.version[:10]}.safetensors"
    lineage = {"train_dataset_version": d.train_version, "val_dataset_version": d.val_version,
               "parent_stacks": parents, "null_space_version": ns_version, "base_version": ctx.base_version,
               "config_hash": cfg_hash, "run": ctx.run_name,
               "metrics": {"val_loss_before": rec.loss_before, "val_loss": rec.loss_after}}
    sf = save_stack(path, model, rec.stack_id, domain=d.domain, round_index=rec.round,
                    base_fingerprint=ctx.base_fingerprint, code_version=code_version(), lineage=lineage)
    rec.file, rec.file_sha256, rec.file_blake3 = str(path), sf.file_sha256, sf.file_blake3
    if ctx.catalog is not None:
        ctx.catalog.record_artifact(uri=f"stack://{ctx.profile}/{ctx.run_name}/{d.domain}/r{rec.round}",
                                    version=rec.version, kind="stack", path=str(path), sha256=sf.file_sha256,
                                    code_version=code_version(), config_hash=cfg_hash, inputs=inputs,
                                    metadata={"stack_id": rec.stack_id, "domain": d.domain, "round": rec.round},
                                    run_ids=ctx.run_ids)
        ctx.catalog.record_metric(rec.version, "val_loss_before", rec.loss_before)
        ctx.catalog.record_metric(rec.version, "val_loss", rec.loss_after)
        for step, loss in rec.history:
            ctx.catalog.record_metric(rec.version, "eval_loss", loss, step=step)


def _record_forgetting(ctx: RunContext, manifest: dict, after: str, rows: list[dict],
                       by_name: dict[str, DomainData]) -> None:
    if ctx.catalog is None:
        return
    stacks = sorted(_stack_versions(manifest).values())
    vals = [(by_name[r["domain"]].test_version if r.get("split") == "test" else None)
            or manifest["domains"][r["domain"]]["val_version"] for r in rows]
    version = content_hash("forgetting", ctx.profile, ctx.run_name, after, stacks, vals)
    ctx.catalog.record_artifact(uri=f"eval://{ctx.profile}/{ctx.run_name}/forgetting/after-{after}", version=version,
                                kind="eval", path=str(ctx.manifest_path), sha256=None, code_version=code_version(),
                                config_hash=manifest["config_hash"], inputs=stacks + sorted(set(vals)),
                                metadata={"after": after, "rows": rows}, run_ids=ctx.run_ids)
    for r in rows:
        for mode in ("isolated", "as_trained", "ungated", "base"):
            ctx.catalog.record_metric(version, f"{r['domain']}/{mode}", r[mode])
