"""The decontamination classifier as a cached, versioned artifact of a preparation.

It is fitted once per data version: its version hashes the versions of the sources
it learns from, whether each is mixed, the domains, the ``data.classifier`` settings,
the seed and the data-path code. It lives in ``<store>/classifiers/<version>/``
(``model.safetensors`` + ``model.json``, see ``domain_classifier``) and is registered in
the catalog as ``classifier://<profile>/decontamination`` (kind ``decontam-classifier``),
its upstream the source versions; every dataset of the preparation names it as an input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from brainstacks_core.data import steps
from brainstacks_core.data.config import DataConfig
from brainstacks_core.data.domain_classifier import ClassifierFileError, DomainClassifier
from brainstacks_core.files import sha256_file
from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.versioning import content_hash, data_code_version

log = logging.getLogger(__name__)

KIND = "decontam-classifier"


def classifier_uri(profile: str) -> str:
    """Catalog URI of a profile's decontamination classifier."""
    return f"classifier://{profile}/decontamination"


def classifier_version(cfg: DataConfig, ingested: dict[str, dict]) -> str:
    """The version the classifier of these ingested sources has (known before any row is read)."""
    mixed = steps.mixed_sources(cfg)
    sources = sorted((d, s["uri"], s["version"], s["uri"] in mixed) for d, m in ingested.items() for s in m["sources"])
    return "clf-" + content_hash("decontam-classifier", sources, sorted(cfg.domains),
                                 cfg.classifier.model_dump(mode="json"), cfg.seed, data_code_version())


def load_or_fit(ctx: StoreContext, cfg: DataConfig, ingested: dict[str, dict], records: pd.DataFrame,
                ) -> tuple[DomainClassifier, dict]:
    """The cached classifier of this data version, else fitted on ``records`` and stored.

    Returns:
        The model and its artifact record (``uri``, ``version``, ``kind``, ``path``,
        ``sha256``, ``inputs``: catalog versions of the sources it learnt from, ``sources``:
        those sources' records, ``info``: training and held-out calibration figures).
    """
    version = classifier_version(cfg, ingested)
    folder = ctx.store / "classifiers" / version
    model = None
    if (folder / "model.json").is_file():
        try:
            model = DomainClassifier.load(folder)
        except ClassifierFileError as exc:  # a broken cache is rebuilt, not trusted
            log.warning("decontamination classifier cache refused, fitting again: %s", exc)
    if model is None:
        model = steps.fit_classifier(records, cfg)
        model.save(folder)
        log.info("decontamination classifier %s fitted: %s", version, model.info)
    used = set(steps.labelled_rows(records, steps.mixed_sources(cfg), cfg.domains)["source_uri"])
    sources = {s["version"]: s for m in ingested.values() for s in m["sources"] if s["uri"] in used}
    path = Path(folder) / "model.safetensors"
    return model, {"uri": classifier_uri(ctx.name), "version": version, "kind": KIND, "path": str(path),
                   "sha256": sha256_file(path), "inputs": sorted(sources), "sources": [sources[v] for v in sorted(sources)],
                   "info": {k: v for k, v in model.info.items() if k != "noisy_classes"}}
