"""Profile-level training entry points: base model, domain data, continual run.

Glue between a profile's sections and the core: which base to build or load
(``base:``), the MoE-LoRA and training sections, the prepared data of each domain
(read by version from the catalog) and where a run writes
(``<store>/training/<run_name>/``). Whole-run functions take a
:class:`~brainstacks_core.training.config.TrainingSetup` (``Profile.training_setup``),
the others only what they read (the store context, a section). Prefect tasks call
these functions and nothing else. Locks: ``run_lock``; reuse of unchanged domains: ``reuse``; what a
run would retrain: ``plan``; repairing a folder: ``repair``.

``base:`` section::

    base: {kind: tiny, tiny: {hidden_size: 64, ...}}                       # built locally (CPU profiles)
    base: {kind: hub, hub: {repo_id: ..., revision: <40-hex sha>, load_in_4bit: true}}
    base: {kind: local, local: {path: models/smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from brainstacks_core.base.config import BaseConfig, TinyBaseConfig
from brainstacks_core.base.loading import default_device_map, load_base
from brainstacks_core.base.tiny_base import BASE_MANIFEST, BaseModelInfo, build_tiny_base, corpus_hash
from brainstacks_core.data.pipeline import load_prepared
from brainstacks_core.training.published_run import materialise_run, publish_run
from brainstacks_core.files import sha256_tree
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.versioning import code_version, config_hash, content_hash
from brainstacks_core.stacks.inject import inject_stacks
from brainstacks_core.training.boosting import DomainData
from brainstacks_core.training.config import TrainingSetup
from brainstacks_core.training.continual import RunContext, finished_run, run_config_hash, run_continual
from brainstacks_core.training.repair import RunInconsistentError
from brainstacks_core.training.reuse import seed_run
from brainstacks_core.training.run_lock import run_lock

log = logging.getLogger(__name__)


def load_domain_data(ctx: StoreContext, domains: list[str], catalog: Catalog | None = None,
                     versions: dict[str, str] | None = None) -> list[DomainData]:
    """Each domain's prepared train/val/test data (``versions[domain]`` if given, else the latest).

    val decides (early stopping, keep, null-space bases); test is reported (forgetting matrix).
    """
    out = []
    for d in domains:
        p = load_prepared(ctx, d, catalog, (versions or {}).get(d))
        test = pd.read_parquet(p.test_path) if p.test_path is not None and p.test_path.exists() else None
        out.append(DomainData(d, pd.read_parquet(p.train_path), pd.read_parquet(p.val_path),
                              p.train_uri_version, p.val_uri_version, test,
                              p.test_uri_version if test is not None else None))
    return out


def pretrain_corpus(cfg: TinyBaseConfig) -> list[str]:
    """The tiny base's own pinned pretraining corpus (``base.tiny.corpus``), generated offline.

    Deterministic (generators + seed), and independent of the fine-tuning data, so
    editing a dataset never changes the base (nor, through it, every domain's stacks).
    """
    from brainstacks_core.data.generators import generate

    c = cfg.corpus
    return [f"{r['prompt']}\n{r['response']}" for g in c.generators for r in generate(g, c.rows_per_generator, c.seed)]


def tiny_base_dir(ctx: StoreContext, cfg: TinyBaseConfig) -> tuple[Path, list[str]]:
    """Folder of the profile's tiny base (keyed by its config and corpus) and the corpus."""
    texts = pretrain_corpus(cfg)
    return ctx.store / "base" / f"tiny-{content_hash(cfg, corpus_hash(texts))}", texts


def base_identity(ctx: StoreContext, base: BaseConfig) -> str | None:
    """The base fingerprint without building anything (None: the tiny base is not built yet)."""
    if base.kind == "hub":
        hub = base.hub
        return content_hash("hub", hub.repo_id, hub.revision)
    import json

    if base.kind == "local":
        from brainstacks_core.base.local import DIGESTS_FILE, DigestCache, LocalBaseError, local_fingerprint

        try:
            cache = DigestCache(ctx.store / "base" / DIGESTS_FILE)
            return local_fingerprint(base.local, ctx.repo_root, cache)[0]
        except (LocalBaseError, OSError):
            return None

    folder, _ = tiny_base_dir(ctx, base.tiny)
    try:
        return json.loads((folder / "brainstacks_base.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_base(setup: TrainingSetup, data: list[DomainData] | None = None, catalog: Catalog | None = None,
                run_ids: dict | None = None) -> BaseModelInfo:
    """Build (tiny), resolve (hub) or fingerprint and convert (local) the base model; register it in the catalog.

    The tiny base is pretrained on its own pinned corpus (:func:`pretrain_corpus`),
    never on the fine-tuning data, under a lock on ``<store>/base`` so concurrent
    runs build it once. ``data`` is accepted for older callers and ignored.
    """
    ctx, base = setup.context, setup.base
    kind = base.kind
    if kind == "hub":
        hub = base.hub
        hub.require_revision()
        info = BaseModelInfo(path=hub.repo_id, fingerprint=content_hash("hub", hub.repo_id, hub.revision),
                             config={"repo_id": hub.repo_id}, source="hub", revision=hub.revision)
        inputs: list[str] = []
        sha = None
    elif kind == "local":
        from brainstacks_core.base.local import ensure_local_base

        store_base = ctx.store / "base"
        with run_lock(store_base, "wait", setup.orchestration.lock_timeout_seconds, what=f"base of {ctx.name}",
                      catalog=catalog, key="base"):
            info, sha = ensure_local_base(base.local, ctx.repo_root, store_base)
        inputs = []
    elif kind == "tiny":
        folder, texts = tiny_base_dir(ctx, base.tiny)
        orch = setup.orchestration
        with run_lock(folder.parent, "wait", orch.lock_timeout_seconds, what=f"base of {ctx.name}",
                      catalog=catalog, key="base"):
            info = build_tiny_base(texts, base.tiny, folder)
        corpus = content_hash("base-corpus", corpus_hash(texts))
        inputs, sha = [corpus], None
        if catalog is not None:
            catalog.record_artifact(uri=f"generated://{ctx.name}/base-corpus", version=corpus, kind="generated",
                                    path=None, sha256=None, code_version=code_version(),
                                    config_hash=config_hash(base.tiny.corpus),
                                    metadata={"texts": len(texts)}, run_ids=run_ids)
    else:
        raise ValueError(f"{ctx.source_path}: base.kind must be 'tiny', 'hub' or 'local', got {kind!r}")
    if catalog is not None:
        meta = {"source": info.source, "revision": info.revision}
        if kind == "local":
            meta.update(gguf_file=info.config["gguf_file"], checkpoint=info.config["path"], files=info.config["files"])
        catalog.record_artifact(uri=f"base://{ctx.name}", version=info.fingerprint, kind="base",
                                path=str(info.path), sha256=sha if sha is not None else base_sha256(info),
                                code_version=code_version(), config_hash=config_hash(base), inputs=inputs,
                                metadata=meta, run_ids=run_ids)
    return info


def base_sha256(info: BaseModelInfo) -> str | None:
    """Content sha256 of the base's files (:func:`~brainstacks_core.files.sha256_tree`).

    Tiny base: its folder, without ``brainstacks_base.json`` (that holds a build
    timestamp; the weights, config and tokenizer are what the stacks depend on). Hub
    base: the pinned snapshot when it is in the local hub cache, else None (logged:
    nothing is downloaded to hash it).
    """
    if info.source != "hub":
        return sha256_tree(info.path, exclude=(BASE_MANIFEST,))
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(str(info.path), revision=info.revision, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or no hub client
        log.info("base %s@%s is not in the local hub cache (%s): no sha256 recorded (nothing is downloaded "
                 "just to hash it)", info.path, info.revision, type(exc).__name__)
        return None
    return sha256_tree(folder)


def load_training_base(base: BaseConfig, info: BaseModelInfo):
    """The base as every training path loads it: a hub base at its pinned revision with the
    hub section's 4-bit setting, a local base with ``base.load_in_4bit``; on CUDA when present.

    Returns:
        ``(model, tokenizer)``, every base parameter frozen, no stack layers.
    """
    device_map = default_device_map()  # one GPU per process: the whole base on the current device
    if info.source == "hub":
        model, tok, _ = load_base(base.hub, device_map=device_map)
    elif base.kind == "local":
        from brainstacks_core.base.local import load_local_base

        model, tok = load_local_base(info.path, base.local, device_map=device_map)
    else:
        model, tok, _ = load_base(info.path, load_in_4bit=base.load_in_4bit, device_map=device_map)
    return model, tok


def load_model(setup: TrainingSetup, info: BaseModelInfo):
    """Load the base (:func:`load_training_base`) and inject stack layers."""
    model, tok = load_training_base(setup.base, info)
    inject_stacks(model, setup.moe)
    return model, tok


def domain_keys(base_fingerprint: str, cfg_hash: str, data: list[DomainData]) -> dict[str, str]:
    """Chained key per curriculum domain: the base, the run's settings, its data and every earlier key.

    Domain k's key changes when the base, the settings, domain k's data or any
    earlier domain's data changes, and only then: that is exactly what its stacks
    depend on (parents and null-space bases come from the earlier domains).
    """
    prev, out = content_hash("chain", base_fingerprint, cfg_hash), {}
    for d in data:
        prev = content_hash(prev, d.domain, d.train_version, d.val_version)
        out[d.domain] = prev
    return out


def run_key(base_fingerprint: str, data: list[DomainData], cfg_hash: str = "") -> str:
    """Identity of a run folder: the last domain's chained key (it covers every input)."""
    return domain_keys(base_fingerprint, cfg_hash, data)[data[-1].domain][:12]


def run_dir(ctx: StoreContext, run_name: str, key: str) -> Path:
    """``<store>/training/<run_name>/<key>``: new data or a new base start a new folder (a fresh run)."""
    return ctx.store / "training" / run_name / key


def current_run_dir(ctx: StoreContext, run_name: str, fetch: bool = True) -> Path:
    """The folder of the run's latest inputs (written by :func:`train_profile`); with an object store, first
    materialised from the published run (``fetch``)."""
    import json

    if fetch:
        materialise_run(ctx, run_name)  # an object store: the published run the pointer names (no-op locally)
    pointer = ctx.store / "training" / run_name / "current.json"
    if not pointer.exists():
        raise FileNotFoundError(f"run {run_name!r} of profile {ctx.name!r} has not trained yet ({pointer} "
                                f"is missing): run `brainstacks train --config {ctx.source_path}`")
    return Path(json.loads(pointer.read_text())["dir"])


def resolve_data_versions(setup: TrainingSetup, catalog: Catalog | None = None) -> dict[str, str]:
    """The latest dataset version of every curriculum domain (pin them once per run)."""
    return {d.domain: d.train_version for d in load_domain_data(setup.context, list(setup.curriculum), catalog)}


def train_profile(setup: TrainingSetup, run_name: str = "main", null_space: bool | None = None,
                  until_domain: str | None = None, catalog: Catalog | None = None,
                  run_ids: dict | None = None, data_versions: dict[str, str] | None = None,
                  progress: Callable[[dict], None] | None = None, on_busy: str | None = None) -> dict:
    """Continual training of the profile's curriculum (resumable); returns the manifest.

    One writer per run: the whole call holds ``<store>/training/<run_name>/.lock``; a
    second request waits (then resumes, retraining nothing) or is skipped
    (``RunBusyError``), per ``orchestration.on_busy``. The run folder is keyed by the
    chained keys of :func:`domain_keys`; a new folder first links in the unchanged
    leading domains of an older folder (``reuse.seed_run``), so a change in domain k
    retrains k and the domains after it only.

    Args:
        setup: the run's sections (``Profile.training_setup``).
        run_name: run folder under ``<store>/training``.
        null_space: overrides ``training.null_space`` (the ablation sets False).
        until_domain: stop after this domain (the ``train_domain`` flow).
        catalog: lineage catalog.
        run_ids: orchestration run ids for the catalog.
        data_versions: dataset version per domain (from :func:`resolve_data_versions`);
            missing domains use the latest.
        progress: hook receiving training progress dicts (``continual.RunContext.progress``).
        on_busy: ``"wait"`` or ``"skip"``; default ``orchestration.on_busy``.

    Raises:
        RunBusyError: another process trains this run and the request skips.
        RunInconsistentError: a stack file differs from the manifest; the message
            names the ``brainstacks repair`` command.
    """
    ctx, cfg = setup.context, setup.training
    if null_space is not None:
        cfg = cfg.model_copy(update={"null_space": null_space})
    order = list(setup.curriculum)
    if until_domain is not None:
        if until_domain not in order:
            raise ValueError(f"domain {until_domain!r} is not in the curriculum {order}")
        order = order[:order.index(until_domain) + 1]
    from brainstacks_core.files import atomic_write_json

    orch = setup.orchestration
    busy = on_busy or orch.on_busy
    every = load_domain_data(ctx, list(setup.curriculum), catalog, data_versions)
    data = [d for d in every if d.domain in order]
    with run_lock(ctx.store / "training" / run_name, busy, orch.lock_timeout_seconds,
                  what=f"run {ctx.name}/{run_name}", catalog=catalog, key=f"training/{run_name}") as lease:
        info = ensure_base(setup, every, catalog, run_ids)
        cfg_hash = run_config_hash(cfg, setup.moe)
        keys = domain_keys(info.fingerprint, cfg_hash, every)
        key = keys[every[-1].domain][:12]
        folder = run_dir(ctx, run_name, key)
        materialise_run(ctx, run_name)  # an object store: resume what another worker published
        seed_run(folder, list(setup.curriculum), keys, info.fingerprint, cfg_hash, ctx.name, run_name,
                 reference=ctx.remote is not None)
        if catalog is not None and not isinstance(lease, Path):
            catalog.fenced(lease).check_fence()  # a stale holder never moves the current pointer
        atomic_write_json(folder.parent / "current.json", {
            "key": key, "dir": str(folder), "base": info.fingerprint, "config_hash": cfg_hash, "chain": keys,
            "data": {d.domain: [d.train_version, d.val_version] for d in every}})
        run = RunContext(ctx.name, run_name, folder, info.fingerprint, base_version=info.fingerprint,
                         catalog=catalog, run_ids=run_ids, domain_keys=keys, progress=progress, on_busy=busy,
                         lock_timeout_s=orch.lock_timeout_seconds, store=ctx)
        try:
            done = finished_run(data, cfg, setup.moe, run)  # nothing to train: no model is loaded
            if done is None:
                model, tok = load_model(setup, info)
                torch.manual_seed(ctx.seed)
                done = run_continual(model, tok, data, cfg, setup.moe, run)
            publish_run(ctx, run_name)  # an object store: the run's files, then its pointer (no-op locally)
            return done
        except RunInconsistentError as exc:
            raise RunInconsistentError(exc.run_dir, exc.domain, exc.round, exc.problem, repair_hint=(
                f"brainstacks repair --config {ctx.source_path} --run {run_name}")) from None


def run_experiment1_for_profile(setup: TrainingSetup, catalog: Catalog | None = None,
                                run_ids: dict | None = None) -> dict:
    """Experiment 1 on the profile's ``experiment1.domain``: cached by its inputs' versions.

    Writes ``<store>/experiment1/<version>.json`` and registers it (kind "eval").
    """
    import json

    from brainstacks_core.files import atomic_write_json, sha256_file

    ctx = setup.context
    if setup.experiment1 is None:
        raise ValueError(f"{ctx.source_path}: the profile has no `experiment1:` section")
    domain, rank = setup.experiment1.domain, setup.experiment1.lora_rank
    (data,) = load_domain_data(ctx, [domain], catalog)
    info = ensure_base(setup, None, catalog, run_ids)
    cfg, moe = setup.training, setup.moe
    version = content_hash("experiment1", data.train_version, data.val_version, info.fingerprint,
                           setup.base.four_bit, cfg.sft, moe,
                           rank, cfg.eval_rows, code_version())
    path = ctx.store / "experiment1" / f"{version}.json"
    if path.exists():
        return json.loads(path.read_text())
    from brainstacks_core.training.experiment1 import run_experiment1  # peft, trl: only when it runs

    first, tok = load_training_base(setup.base, info)  # as training loads it (pinned revision, 4-bit, device)
    pending = [first]

    def build():  # the first arm gets the model loaded with the tokenizer, the second a fresh load
        return pending.pop() if pending else load_training_base(setup.base, info)[0]

    val = data.val if cfg.eval_rows is None else data.val.head(cfg.eval_rows)
    result = run_experiment1(build, tok, data.train, val, cfg.sft, moe, lora_rank=rank)
    out = {"domain": domain, "version": version, **result.to_dict()}
    atomic_write_json(path, out)
    if catalog is not None:
        catalog.record_artifact(uri=f"eval://{ctx.name}/experiment1", version=version, kind="eval",
                                path=str(path), sha256=sha256_file(path), code_version=code_version(),
                                config_hash=config_hash({"sft": cfg.sft, "moe": moe, "rank": rank}),
                                inputs=[data.train_version, data.val_version, info.fingerprint],
                                metadata={"domain": domain}, run_ids=run_ids)
    return out


def input_uris(setup: TrainingSetup) -> list[str]:
    """Catalog URIs a training run reads, known before it runs (OpenLineage START): the base and every
    curriculum domain's train, val and test split."""
    name = setup.context.name
    splits = ("train", "val", "test")
    return [f"base://{name}"] + [f"dataset://{name}/{d}/{s}" for d in setup.curriculum for s in splits]
