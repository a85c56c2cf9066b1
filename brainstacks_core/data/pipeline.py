"""The data pipeline: sources -> normalised -> stripped -> decontaminated -> split parquet.

Three stages, each keyed by the versions of its inputs so an unchanged input is
never recomputed:

1. :func:`ingest_domain` reads and normalises a domain's sources, strips chat
   tokens, validates (``NormalisedRecords``, ``StrippedRecords``).
2. :func:`assign_domains` runs keyword decontamination over every domain at once
   (rows move between domains of the run, or are dropped).
3. :func:`finalize_domain` removes benchmark 13-gram overlaps, de-duplicates by
   ``record_id``, caps, splits by hash, validates (``SplitRecords``), writes
   ``datasets/<domain>/<version>/{train,val}.parquet`` and records lineage.

Every input row ends in exactly one of train, val, quarantine, dropped-with-reason;
:func:`check_conservation` asserts it per domain.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brainstacks_core.data import steps as steps
from brainstacks_core.data.config import DataConfig
from brainstacks_core.files import atomic_write, atomic_write_json, sha256_file
from brainstacks_core.lineage.catalog import Catalog
from brainstacks_core.lineage.versioning import config_hash, content_hash, data_code_version
from brainstacks_core.profile import Profile

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["record_id", "domain", "prompt", "response", "system", "source_uri", "source_version",
                 "source_row_key"]


class ConservationError(AssertionError):
    """Rows were lost or double-counted between input and output."""


@dataclass(frozen=True)
class PreparedDataset:
    """One prepared domain dataset.

    Attributes:
        domain: The domain.
        version: Content version of the dataset (train and val together).
        train_path: Train parquet (columns ``TRAIN_COLUMNS``).
        val_path: Validation parquet.
        quarantine_path: Quarantined rows with stage, check, field, value, reason.
        dropped_path: Dropped rows with their reason (keyword, benchmark, duplicate, cap).
        moves_path: Keyword moves into and out of this domain.
        counts: in, moved_in, moved_out, quarantined, dropped_*, train, val.
        cache_hit: True when nothing was recomputed.
    """

    domain: str
    version: str
    train_path: Path
    val_path: Path
    quarantine_path: Path
    dropped_path: Path
    moves_path: Path
    counts: dict = field(default_factory=dict)
    cache_hit: bool = False

    @property
    def train_uri_version(self) -> str:
        """Catalog version of the train artifact."""
        return f"{self.version}-train"

    @property
    def val_uri_version(self) -> str:
        """Catalog version of the val artifact."""
        return f"{self.version}-val"


def check_conservation(counts: dict, domain: str) -> None:
    """``in + moved_in == train + val + quarantined + moved_out + dropped``, else raise."""
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    lhs = counts["in"] + counts["moved_in"]
    rhs = counts["train"] + counts["val"] + counts["quarantined"] + counts["moved_out"] + dropped
    if lhs != rhs:
        raise ConservationError(f"{domain}: {lhs} rows in (in + moved_in) but {rhs} accounted for: {counts}")


def _write_parquet(df: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path) as tmp:
        df.reset_index(drop=True).to_parquet(tmp, index=False)
    return path


def _step_config(cfg: DataConfig) -> dict:
    return cfg.model_dump(mode="json")


def ingest_domain(profile: Profile, cfg: DataConfig, domain: str) -> dict:
    """Stage 1 for one domain; returns its meta (cached under ``staging/ingest``)."""
    store = profile.store
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


def assign_domains(profile: Profile, cfg: DataConfig, ingested: dict[str, dict]) -> dict:
    """Stage 2 over every domain of the run; returns its meta (cached under ``staging/assign``)."""
    key = content_hash("assign", sorted((d, m["key"]) for d, m in ingested.items()), cfg.lexicons,
                       cfg.margin, cfg.min_score, cfg.domains, data_code_version())
    folder = profile.store / "staging" / "assign" / key
    if (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    frames = [pd.read_parquet(Path(m["folder"]) / "records.parquet") for m in ingested.values()]
    kept, moves, dropped = steps.keyword_step(pd.concat(frames, ignore_index=True), cfg)
    _write_parquet(kept, folder / "records.parquet")
    _write_parquet(moves, folder / "moves.parquet")
    _write_parquet(dropped, folder / "dropped.parquet")
    meta = {"key": key, "folder": str(folder), "moves": len(moves), "dropped": len(dropped)}
    atomic_write_json(folder / "meta.json", meta)
    return meta


def finalize_domain(profile: Profile, cfg: DataConfig, domain: str, ingested: dict[str, dict], assigned: dict,
                    catalog: Catalog | None = None, run_ids: dict | None = None) -> PreparedDataset:
    """Stage 3 for one domain: benchmark decontamination, dedup, cap, split, write, register."""
    evals = steps.eval_identities(cfg, profile.store)
    input_key = content_hash("final", assigned["key"], domain, [(e["name"], e["version"]) for e in evals],
                             cfg.ngram, cfg.val_fraction, cfg.seed, cfg.max_rows_per_domain, data_code_version())
    index_file = profile.store / "datasets" / domain / "_inputs" / f"{input_key}.json"
    if index_file.is_file():
        manifest_path = Path(json.loads(index_file.read_text(encoding="utf-8"))["manifest"])
        if manifest_path.is_file():
            prepared = _from_manifest(manifest_path, cache_hit=True)
            _register(profile, cfg, prepared, catalog, run_ids)
            return prepared
    afolder = Path(assigned["folder"])
    rows = pd.read_parquet(afolder / "records.parquet")
    moves = pd.read_parquet(afolder / "moves.parquet")
    kw_dropped = pd.read_parquet(afolder / "dropped.parquet")
    result = steps.finalize(rows[rows["domain"] == domain], cfg, steps.benchmark_index(cfg, profile.store))
    own_q = pd.read_parquet(Path(ingested[domain]["folder"]) / "quarantine.parquet")
    quarantine = pd.concat([q for q in (own_q, result.quarantine) if not q.empty] or [own_q], ignore_index=True)
    kw_drop = kw_dropped[kw_dropped["from_domain"] == domain]
    dropped = pd.concat([steps.as_dropped(kw_drop, "keyword")] + result.dropped, ignore_index=True)
    my_moves = moves[(moves["from_domain"] == domain) | (moves["to_domain"] == domain)]
    counts = {"in": int(ingested[domain]["n_in"]), "moved_in": int((moves["to_domain"] == domain).sum()),
              "moved_out": int((moves["from_domain"] == domain).sum()), "quarantined": len(quarantine),
              "dropped_keyword": len(kw_drop), **result.drop_counts,
              "train": len(result.train), "val": len(result.val)}
    check_conservation(counts, domain)
    version = content_hash("dataset", domain, input_key,
                           result.train[["record_id", "source_uri", "source_row_key"]].values.tolist(),
                           result.val[["record_id", "source_uri", "source_row_key"]].values.tolist())
    folder = profile.store / "datasets" / domain / version
    train_path = _write_parquet(result.train[TRAIN_COLUMNS], folder / "train.parquet")
    val_path = _write_parquet(result.val[TRAIN_COLUMNS], folder / "val.parquet")
    dropped_path = _write_parquet(dropped, folder / "dropped.parquet")
    moves_path = _write_parquet(my_moves, folder / "moves.parquet")
    q_path = _write_parquet(quarantine, profile.store / "quarantine" / domain / f"{version}.parquet")
    used_sources = set(result.train["source_version"]) | set(result.val["source_version"])
    all_sources = {s["version"]: s for m in ingested.values() for s in m["sources"]}
    inputs = [s for v, s in all_sources.items() if v in used_sources or s in ingested[domain]["sources"]]
    manifest = {"domain": domain, "version": version, "input_key": input_key, "counts": counts,
                "code_version": data_code_version(), "config_hash": config_hash(_step_config(cfg)),
                "train_path": str(train_path), "val_path": str(val_path), "quarantine_path": str(q_path),
                "dropped_path": str(dropped_path), "moves_path": str(moves_path),
                "sources": inputs, "eval_sets": evals,
                "sha256": {"train": sha256_file(train_path), "val": sha256_file(val_path)}}
    manifest_path = atomic_write_json(folder / "manifest.json", manifest)
    atomic_write_json(index_file, {"manifest": str(manifest_path), "version": version})
    prepared = _from_manifest(manifest_path, cache_hit=False)
    _register(profile, cfg, prepared, catalog, run_ids)
    log.info("%s: version %s %s", domain, version, counts)
    return prepared


def _from_manifest(path: Path, cache_hit: bool) -> PreparedDataset:
    m = json.loads(Path(path).read_text(encoding="utf-8"))
    return PreparedDataset(domain=m["domain"], version=m["version"], train_path=Path(m["train_path"]),
                           val_path=Path(m["val_path"]), quarantine_path=Path(m["quarantine_path"]),
                           dropped_path=Path(m["dropped_path"]), moves_path=Path(m["moves_path"]),
                           counts=m["counts"], cache_hit=cache_hit)


def _register(profile: Profile, cfg: DataConfig, prepared: PreparedDataset, catalog: Catalog | None,
              run_ids: dict | None) -> None:
    """Record sources, eval sets, train and val artifacts and row membership."""
    cat = catalog or Catalog(profile.catalog_path)
    m = json.loads((prepared.train_path.parent / "manifest.json").read_text(encoding="utf-8"))
    inputs = []
    for s in m["sources"] + m["eval_sets"]:
        cat.record_artifact(uri=s["uri"], version=s["version"], kind=s["kind"], path=s.get("path"),
                            sha256=s.get("sha256"), code_version=m["code_version"], config_hash=None,
                            run_ids=run_ids)
        inputs.append(s["version"])
    for split, path, version in (("train", prepared.train_path, prepared.train_uri_version),
                                 ("val", prepared.val_path, prepared.val_uri_version)):
        fresh = cat.get(version) is None
        cat.record_artifact(uri=f"dataset://{profile.name}/{prepared.domain}/{split}", version=version,
                            kind="dataset", path=str(path), sha256=m["sha256"][split],
                            code_version=m["code_version"], config_hash=m["config_hash"], inputs=inputs,
                            metadata={"dataset_version": prepared.version, "split": split,
                                      "counts": prepared.counts}, run_ids=run_ids)
        if fresh:
            rows = pd.read_parquet(path, columns=["record_id", "source_uri", "source_version", "source_row_key"])
            cat.record_members(version, rows.assign(split=split))


def prepare_all(profile: Profile, domains: list[str] | None = None, catalog: Catalog | None = None,
                run_ids: dict | None = None) -> dict[str, PreparedDataset]:
    """Prepare some or all domains of a profile (keyword moves always see every domain).

    Args:
        profile: The profile.
        domains: Domains to write (default: all, in curriculum order).
        catalog: Lineage catalog (default: the profile's).
        run_ids: Prefect flow/task run ids to record.

    Returns:
        Prepared datasets by domain.
    """
    cfg = profile.data
    wanted = list(domains or cfg.domains)
    unknown = [d for d in wanted if d not in cfg.domains]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; profile {profile.name!r} has {cfg.domains}")
    ingested = {d: ingest_domain(profile, cfg, d) for d in cfg.domains}
    assigned = assign_domains(profile, cfg, ingested)
    return {d: finalize_domain(profile, cfg, d, ingested, assigned, catalog, run_ids) for d in wanted}


def prepare_domain(profile: Profile, domain: str, catalog: Catalog | None = None,
                   run_ids: dict | None = None) -> PreparedDataset:
    """Prepare one domain (the same version as when prepared with all the others)."""
    return prepare_all(profile, [domain], catalog, run_ids)[domain]


def load_prepared(profile: Profile, domain: str, catalog: Catalog | None = None,
                  version: str | None = None) -> PreparedDataset:
    """A prepared version of ``domain`` registered in the catalog: ``version`` (the
    dataset version or its ``-train`` artifact version), or the latest.

    Raises:
        LookupError: The domain (or that version of it) was never prepared for this profile.
    """
    cat = catalog or Catalog(profile.catalog_path)
    uri = f"dataset://{profile.name}/{domain}/train"
    if version is None:
        art = cat.latest(uri)
    else:
        art = cat.get(version if version.endswith("-train") else f"{version}-train")
        if art is not None and art["uri"] != uri:
            raise LookupError(f"version {version} is {art['uri']}, not {uri}")
    if art is None:
        what = f"version {version} of " if version else ""
        raise LookupError(f"no prepared dataset for {what}{profile.name}/{domain}; run `brainstacks prepare`")
    return _from_manifest(Path(art["path"]).parent / "manifest.json", cache_hit=True)
