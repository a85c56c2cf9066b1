"""The data pipeline: sources -> normalised -> stripped -> decontaminated -> split parquet.

Three stages, each keyed by the versions of its inputs so an unchanged input is
never recomputed:

1. :func:`ingest_domain` reads and normalises a domain's sources, strips chat
   tokens, validates (``NormalisedRecords``, ``StrippedRecords``).
2. :func:`assign_domains` runs keyword decontamination over every domain at once,
   with the domain classifier learnt from the single-domain sources (fitted once per
   data version, ``classifier_artifact``): rows move between domains of the run, are
   dropped, or are flagged.
3. :func:`finalize_domain` removes benchmark 13-gram overlaps, de-duplicates by
   ``record_id``, caps, splits by hash into train / val / test / router, validates
   (``SplitRecords``) and writes ``datasets/<domain>/<version>/<split>.parquet``.

Then :func:`register_prepared` records every domain in the catalog in one
transaction, so a prepare that fails anywhere registers nothing.

A domain's **version** hashes only what that domain is: its rows per split (record
id, source, source version, row key), the artifacts they came from (sources and
eval sets), its own step config and the data-path code. A byte edit in another
domain's file, or a lexicon entry that moves nothing in or out, leaves it alone.

Every input row ends in exactly one of the splits, quarantine, moved out, or
dropped-with-reason; :func:`check_conservation` asserts it per domain.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd

from brainstacks_core.data import classifier_artifact
from brainstacks_core.data import published as remote
from brainstacks_core.data import steps as steps
from brainstacks_core.data.config import DataConfig
from brainstacks_core.data.prepared import (
    _SPLIT_COLUMNS,
    TRAIN_COLUMNS,
    ConservationError,
    EmptyDomainError,
    PreparedDataset,
    check_conservation,
)
from brainstacks_core.data.steps import SPLITS
from brainstacks_core.files import atomic_write, atomic_write_json, sha256_file
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.store_sync import blob_store
from brainstacks_core.lineage.versioning import config_hash, content_hash, data_code_version

log = logging.getLogger(__name__)

__all__ = ["TRAIN_COLUMNS", "ConservationError", "EmptyDomainError", "PreparedDataset", "assign_domains",
           "check_conservation", "domain_config", "finalize_domain", "from_manifest", "ingest_domain",
           "load_prepared", "prepare_all", "prepare_domain", "register_prepared", "top_reasons"]

def _write_parquet(df: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path) as tmp:
        df.reset_index(drop=True).to_parquet(tmp, index=False)
    return path


def domain_config(cfg: DataConfig, domain: str) -> dict:
    """The part of the data config that shapes one domain's dataset (hashed into its version)."""
    return {"domain": domain, "sources": [s.model_dump(mode="json") for s in cfg.sources[domain]],
            "ngram": cfg.ngram, "template_min_items": cfg.template_min_items, "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction, "router_fraction": cfg.router_fraction, "seed": cfg.seed,
            "max_rows_per_domain": cfg.max_rows_per_domain, "max_chars": cfg.max_chars}


def classifier_part(clf: dict | None, domain_log: pd.DataFrame) -> dict | None:
    """The classifier record, if it took part in this domain's decisions, else ``None``.

    It took part when a row this domain logs (moved in or out, dropped, flagged) carries
    a classifier probability. Then its version is hashed into the domain's version (a
    new classifier gives a new version, even when the same rows move: the log's
    probabilities and evidence differ) and it is an input of the domain's datasets.
    Otherwise the domain's files do not depend on it: neither its version nor its
    manifest mentions it, so a classifier that changes nothing for a domain neither
    re-versions it nor rewrites its manifest under the same version.
    """
    if not clf or domain_log.empty or "probability" not in domain_log.columns:
        return None
    return clf if domain_log["probability"].notna().any() else None


def top_reasons(quarantine: pd.DataFrame, k: int = 3) -> list[list]:
    """The ``k`` most common quarantine reasons as ``[label, count]`` (label: stage, check, field)."""
    if quarantine.empty:
        return []
    labels = quarantine["stage"].astype(str) + ": " + quarantine["check"].astype(str) + " on field '" + \
        quarantine["field"].astype(str) + "'"
    return [[str(a), int(b)] for a, b in labels.value_counts().head(k).items()]


def ingest_domain(ctx: StoreContext, cfg: DataConfig, domain: str) -> dict:
    """Stage 1 for one domain; returns its meta (cached under ``staging/ingest``)."""
    store = ctx.store
    idents = [steps.identify(spec, cfg, store) for spec in cfg.sources[domain]]
    key = content_hash("ingest", domain, [(i.uri, i.version) for i in idents],
                       [s.model_dump(mode="json") for s in cfg.sources[domain]], cfg.max_chars, data_code_version())
    folder = store / "staging" / "ingest" / domain / key
    if (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    records, quarantine, n_in = steps.ingest(cfg, domain, store, idents)
    _write_parquet(records, folder / "records.parquet")
    _write_parquet(quarantine, folder / "quarantine.parquet")
    meta = {"key": key, "domain": domain, "n_in": n_in, "folder": str(folder),
            "sources": [i.as_dict() for i in idents]}
    atomic_write_json(folder / "meta.json", meta)
    return meta


def assign_domains(ctx: StoreContext, cfg: DataConfig, ingested: dict[str, dict]) -> dict:
    """Stage 2 over every domain of the run; returns its meta (cached under ``staging/assign``)."""
    learn = cfg.classifier.enabled and len(cfg.domains) > 1  # one domain: nothing to tell apart
    clf_version = classifier_artifact.classifier_version(cfg, ingested) if learn else None
    key = content_hash("assign", sorted((d, m["key"]) for d, m in ingested.items()), cfg.lexicons,
                       cfg.margin, cfg.min_score, cfg.single_domain_min_score, sorted(steps.mixed_sources(cfg)),
                       cfg.domains, clf_version, data_code_version())
    folder = ctx.store / "staging" / "assign" / key
    if (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    records = pd.concat([pd.read_parquet(Path(m["folder"]) / "records.parquet") for m in ingested.values()],
                        ignore_index=True)
    model, clf = classifier_artifact.load_or_fit(ctx, cfg, ingested, records) if clf_version else (None, None)
    kept, moves, dropped, flagged = steps.keyword_step(records, cfg, model, clf_version or "")
    _write_parquet(kept, folder / "records.parquet")
    _write_parquet(moves, folder / "moves.parquet")
    _write_parquet(dropped, folder / "dropped.parquet")
    _write_parquet(flagged, folder / "flagged.parquet")
    meta = {"key": key, "folder": str(folder), "moves": len(moves), "dropped": len(dropped), "flagged": len(flagged),
            "classifier": clf}
    atomic_write_json(folder / "meta.json", meta)
    return meta


def _example_moves(log_rows: pd.DataFrame, k: int = 5) -> list[dict]:
    cols = ["action", "from_domain", "to_domain", "source_uri", "source_row_key", "top_keywords", "probability",
            "evidence"]
    rows = log_rows.reindex(columns=cols)
    return [dict(zip(cols, map(str, r))) for r in rows.head(k).itertuples(index=False)]


def finalize_domain(ctx: StoreContext, cfg: DataConfig, domain: str, ingested: dict[str, dict], assigned: dict,
                    ) -> PreparedDataset:
    """Stage 3 for one domain: benchmark decontamination, dedup, cap, split, write (not registered).

    Raises:
        EmptyDomainError: No row is left for the train split (nothing written).
    """
    evals = steps.eval_identities(cfg, ctx.store)
    input_key = content_hash("final", assigned["key"], domain_config(cfg, domain),
                             [(e["name"], e["version"]) for e in evals], data_code_version())
    index_file = ctx.store / "datasets" / domain / "_inputs" / f"{input_key}.json"
    if index_file.is_file():
        manifest_path = Path(json.loads(index_file.read_text(encoding="utf-8"))["manifest"])
        if manifest_path.is_file():
            return from_manifest(manifest_path, cache_hit=True)
    afolder = Path(assigned["folder"])
    rows = pd.read_parquet(afolder / "records.parquet")
    moves = pd.read_parquet(afolder / "moves.parquet")
    kw_dropped = pd.read_parquet(afolder / "dropped.parquet")
    flagged = pd.read_parquet(afolder / "flagged.parquet")
    result = steps.finalize(rows[rows["domain"] == domain], cfg, steps.benchmark_index(cfg, ctx.store, evals))
    own_q = pd.read_parquet(Path(ingested[domain]["folder"]) / "quarantine.parquet")
    quarantine = pd.concat([q for q in (own_q, result.quarantine) if not q.empty] or [own_q], ignore_index=True)
    kw_drop = kw_dropped[kw_dropped["from_domain"] == domain]
    dropped = pd.concat([steps.as_dropped(kw_drop, "keyword")] + result.dropped, ignore_index=True)
    my_log = pd.concat([moves[(moves["from_domain"] == domain) | (moves["to_domain"] == domain)].assign(action="move"),
                        kw_drop.assign(action="drop"), flagged[flagged["from_domain"] == domain].assign(action="flag")],
                       ignore_index=True)
    counts = {"in": int(ingested[domain]["n_in"]), "moved_in": int((moves["to_domain"] == domain).sum()),
              "moved_out": int((moves["from_domain"] == domain).sum()), "quarantined": len(quarantine),
              "dropped_keyword": len(kw_drop), **result.drop_counts,
              "flagged": int((flagged["from_domain"] == domain).sum()),
              **{s: len(result.splits[s]) for s in SPLITS}}
    if "evidence" in moves.columns:  # moves the classifier decided alone (the rest: keywords, or both)
        by_clf = moves["evidence"] == "classifier"
        counts["moved_in_by_classifier"] = int((by_clf & (moves["to_domain"] == domain)).sum())
        counts["moved_out_by_classifier"] = int((by_clf & (moves["from_domain"] == domain)).sum())
    check_conservation(counts, domain)
    reasons = top_reasons(quarantine)
    if counts["train"] == 0:
        raise EmptyDomainError(
            f"domain {domain!r}: 0 rows left for training ({counts}); nothing written. Quarantined rows: "
            f"{Path(ingested[domain]['folder']) / 'quarantine.parquet'}"
            + (f"; most common reasons: {'; '.join(f'{r} ({n})' for r, n in reasons)}" if reasons else ""))
    all_sources = {(s["uri"], s["source_version"]): s for m in ingested.values() for s in m["sources"]}
    used = set()
    for part in result.splits.values():
        used |= set(zip(part["source_uri"], part["source_version"]))
    inputs = [s for k, s in all_sources.items() if k in used or s in ingested[domain]["sources"]]
    dcfg = domain_config(cfg, domain)
    clf = classifier_part(assigned.get("classifier"), my_log)
    member_cols = ["record_id", "source_uri", "source_version", "source_row_key"]
    version = content_hash("dataset", domain, {s: result.splits[s][member_cols].values.tolist() for s in SPLITS},
                           sorted(s["version"] for s in inputs), sorted(e["version"] for e in evals), dcfg,
                           clf["version"] if clf else None, data_code_version())
    folder = ctx.store / "datasets" / domain / version
    if (folder / "manifest.json").is_file():  # a version is written once: same version, same files
        atomic_write_json(index_file, {"manifest": str(folder / "manifest.json"), "version": version})
        return from_manifest(folder / "manifest.json", cache_hit=True)
    paths = {s: _write_parquet(result.splits[s][_SPLIT_COLUMNS], folder / f"{s}.parquet") for s in SPLITS}
    dropped_path = _write_parquet(dropped, folder / "dropped.parquet")
    moves_path = _write_parquet(my_log, folder / "moves.parquet")
    q_path = _write_parquet(quarantine, ctx.store / "quarantine" / domain / f"{version}.parquet")
    report = {"top_reasons": reasons, "moves": _example_moves(my_log[my_log["action"] != "flag"]),
              "flagged": _example_moves(my_log[my_log["action"] == "flag"])}
    if clf:
        report["classifier"] = {"version": clf["version"], **clf["info"]}
    manifest = {"domain": domain, "version": version, "input_key": input_key, "counts": counts, "report": report,
                "code_version": data_code_version(), "config_hash": config_hash(dcfg),
                **{f"{s}_path": _rel(p, ctx) for s, p in paths.items()}, "quarantine_path": _rel(q_path, ctx),
                "dropped_path": _rel(dropped_path, ctx), "moves_path": _rel(moves_path, ctx),
                "sources": _portable(inputs, ctx), "eval_sets": _portable(evals, ctx), "classifier": clf,
                "sha256": {s: sha256_file(p) for s, p in paths.items()}}
    manifest_path = atomic_write_json(folder / "manifest.json", manifest)
    atomic_write_json(index_file, {"manifest": str(manifest_path), "version": version})
    log.info("%s: version %s %s", domain, version, counts)
    return from_manifest(manifest_path, cache_hit=False)


def _rel(path: Path, ctx: StoreContext) -> str:
    """A file of the store as the manifest names it: relative to the store (no host path)."""
    return Path(path).resolve().relative_to(ctx.store.resolve()).as_posix()


def _portable(entries: list[dict], ctx: StoreContext) -> list[dict]:
    """Source / eval-set records with their paths relative to the repository or the store (an object
    store; a local store keeps them as they are)."""
    if ctx.remote is None:
        return entries
    return [{**e, "path": remote.portable_path(e.get("path"), ctx)} if e.get("path") else e for e in entries]


def from_manifest(path: Path, cache_hit: bool) -> PreparedDataset:
    """The prepared dataset a manifest describes; its file paths resolve against the store holding it
    (``<store>/datasets/<domain>/<version>/manifest.json``; older manifests hold absolute paths)."""
    path = Path(path)
    m = json.loads(path.read_text(encoding="utf-8"))
    root = path.parents[3]

    def at(key: str) -> Path | None:
        if not m.get(key):
            return None
        p = Path(m[key])
        return p if p.is_absolute() else root / p

    return PreparedDataset(domain=m["domain"], version=m["version"], train_path=at("train_path"),
                           val_path=at("val_path"), quarantine_path=at("quarantine_path"),
                           dropped_path=at("dropped_path"), moves_path=at("moves_path"),
                           test_path=at("test_path"), router_path=at("router_path"), counts=m["counts"],
                           report=m.get("report", {}), cache_hit=cache_hit)


def register_prepared(ctx: StoreContext, prepared: dict[str, PreparedDataset], catalog: Catalog | None = None,
                      run_ids: dict | None = None, classifier: dict | None = None) -> dict[str, PreparedDataset]:
    """Record every domain's sources, eval sets, split artifacts and row membership, in one transaction.

    ``classifier`` (the assign stage's ``classifier`` record) is registered even when no
    dataset names it as an input (it decided nothing for any of them); the datasets it
    decided for name it in their manifests.

    Returns:
        The datasets with ``new_version`` set: True when the domain's train URI had
        another (or no) latest version before (a version-changed event is due).
    """
    cat = catalog or Catalog.for_context(ctx)
    out, seen = {}, set()
    last = list(prepared)[-1] if prepared else None
    store = blob_store(ctx)  # an object store: blobs first, then the catalog rows, then the pointers
    published = {d: remote.publish_dataset(store, ctx, p) for d, p in prepared.items()} if store else {}
    with cat.batch():
        for domain, p in prepared.items():
            m = json.loads((p.train_path.parent / "manifest.json").read_text(encoding="utf-8"))
            before = cat.latest(f"dataset://{ctx.name}/{domain}/train")
            clf = m.get("classifier") or (classifier if domain == last else None)
            for s in m["sources"] + m["eval_sets"] + (clf["sources"] if clf else []):
                if s["version"] in seen:
                    continue
                seen.add(s["version"])
                cat.record_artifact(uri=s["uri"], version=s["version"], kind=s["kind"],
                                    path=remote.portable_path(s.get("path"), ctx) if store else s.get("path"),
                                    sha256=s.get("sha256"), code_version=m["code_version"], config_hash=None,
                                    run_ids=run_ids)
            inputs = [s["version"] for s in m["sources"] + m["eval_sets"]]
            named = m.get("classifier") is not None
            if clf and clf["version"] not in seen:  # its upstream: the sources it learnt from; downstream: every dataset it decided moves for
                cat.record_artifact(uri=clf["uri"], version=clf["version"], kind=clf["kind"],
                                    path=store.put(clf["path"], clf["sha256"]) if store and clf.get("path")
                                    and Path(clf["path"]).is_file() else clf["path"],
                                    sha256=clf["sha256"], code_version=m["code_version"], config_hash=None,
                                    inputs=clf["inputs"], metadata=clf["info"], run_ids=run_ids)
                seen.add(clf["version"])
            if named:
                inputs.append(clf["version"])
            for split in SPLITS:
                path, version = p.split_path(split), p.uri_version(split)
                if path is None:
                    continue
                fresh = cat.get(version) is None
                cat.record_artifact(uri=f"dataset://{ctx.name}/{domain}/{split}", version=version,
                                    kind="dataset", path=remote.split_uri(published[domain], ctx, path) if store
                                    else str(path), sha256=m["sha256"][split],
                                    code_version=m["code_version"], config_hash=m["config_hash"], inputs=inputs,
                                    metadata={"dataset_version": p.version, "split": split, "counts": p.counts,
                                              **({"tree": published[domain]["uri"],
                                                  "manifest": published[domain]["manifest"]} if store else {})},
                                    run_ids=run_ids)
                if fresh:
                    rows = pd.read_parquet(path, columns=["record_id", "source_uri", "source_version",
                                                          "source_row_key", "origin_domain"])
                    cat.record_members(version, rows.assign(split=split))
            out[domain] = dataclasses.replace(p, new_version=before is None or before["version"] != p.train_uri_version)
    for domain, p in (prepared.items() if store else ()):  # last: readers follow the pointers
        remote.write_dataset_pointer(store, ctx, p, published[domain])
    return out


def prepare_all(ctx: StoreContext, cfg: DataConfig, domains: list[str] | None = None,
                catalog: Catalog | None = None, run_ids: dict | None = None) -> dict[str, PreparedDataset]:
    """Prepare some or all domains of a profile (keyword moves always see every domain).

    Every domain is finished before anything is registered: a failure in any
    domain raises and leaves the catalog as it was.

    Args:
        ctx: The profile's store context (``Profile.context``).
        cfg: The ``data:`` section.
        domains: Domains to write (default: all, in curriculum order).
        catalog: Lineage catalog (default: the profile's).
        run_ids: Prefect flow/task run ids to record.

    Returns:
        Prepared datasets by domain.
    """
    wanted = list(domains or cfg.domains)
    unknown = [d for d in wanted if d not in cfg.domains]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; profile {ctx.name!r} has {cfg.domains}")
    ingested = {d: ingest_domain(ctx, cfg, d) for d in cfg.domains}
    assigned = assign_domains(ctx, cfg, ingested)
    prepared = {d: finalize_domain(ctx, cfg, d, ingested, assigned) for d in wanted}
    return register_prepared(ctx, prepared, catalog, run_ids, assigned.get("classifier"))


def prepare_domain(ctx: StoreContext, cfg: DataConfig, domain: str, catalog: Catalog | None = None,
                   run_ids: dict | None = None) -> PreparedDataset:
    """Prepare one domain (the same version as when prepared with all the others)."""
    return prepare_all(ctx, cfg, [domain], catalog, run_ids)[domain]


def load_prepared(ctx: StoreContext, domain: str, catalog: Catalog | None = None,
                  version: str | None = None) -> PreparedDataset:
    """A prepared version of ``domain`` registered in the catalog: ``version`` (the
    dataset version or its ``-train`` artifact version), or the latest.

    Raises:
        LookupError: The domain (or that version of it) was never prepared for this profile.
    """
    cat = catalog or Catalog.for_context(ctx)
    uri = f"dataset://{ctx.name}/{domain}/train"
    store = blob_store(ctx)
    if version is None and store is not None:  # an object store: the pointer names the current version
        pointer = store.read_pointer(ctx.name, remote.POINTER_KIND, domain)
        art = cat.get(pointer["version"]) if pointer else None
    elif version is None:
        art = cat.latest(uri)
    else:
        art = cat.get(version if version.endswith("-train") else f"{version}-train")
        if art is not None and art["uri"] != uri:
            raise LookupError(f"version {version} is {art['uri']}, not {uri}")
    if art is None:
        what = f"version {version} of " if version else ""
        raise LookupError(f"no prepared dataset for {what}{ctx.name}/{domain}; run `brainstacks prepare`")
    if store is not None:
        return from_manifest(remote.materialise_dataset(store, ctx, art), cache_hit=True)
    return from_manifest(Path(art["path"]).parent / "manifest.json", cache_hit=True)


def input_uris(cfg: DataConfig) -> list[str]:
    """Catalog URIs a preparation reads, known before it runs: every source and eval set (OpenLineage START)."""
    from brainstacks_core.data.sources import source_uri

    sources = [source_uri(spec, cfg) for d in cfg.domains for spec in cfg.sources[d]]
    return list(dict.fromkeys(sources + [f"eval://{e.name}" for e in cfg.eval_sets]))
