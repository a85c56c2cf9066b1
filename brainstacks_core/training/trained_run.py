"""A trained run loaded for inference: the base with every frozen stack of the run attached.

What belongs here: :func:`load_run` (routing, evaluation and the superposition
tests read a run through it) and :func:`load_base_only` (the base with empty stack
layers, for ``base`` mode before any training). Stack files are checksum-verified
against the run's manifest on load.
"""

from __future__ import annotations

import json

from brainstacks_core.training.config import TrainingSetup


def load_run(setup: TrainingSetup, run_name: str, catalog=None) -> dict:
    """The profile's base with every frozen stack of run ``run_name`` attached (checksums verified).

    Returns:
        ``{"model", "tokenizer", "base_fingerprint", "base_version", "stack_versions", "domain_stacks"}``.
    """
    from brainstacks_core.stacks.stack_io import attach_stack, load_stack
    from brainstacks_core.training.continual import domain_stacks
    from brainstacks_core.training.run import current_run_dir, ensure_base, load_domain_data, load_model

    folder = current_run_dir(setup.context, run_name)
    pointer = json.loads((folder.parent / "current.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    versions = {d: v[0] for d, v in pointer.get("data", {}).items()}
    info = ensure_base(setup, load_domain_data(setup.context, list(setup.curriculum), catalog, versions), catalog)
    model, tok = load_model(setup, info)
    stack_versions = {}
    for dom in manifest["domains_order"]:
        for r in manifest["domains"].get(dom, {}).get("rounds", []):
            if r["status"] != "frozen":
                continue
            sf = load_stack(r["file"], base_fingerprint=info.fingerprint)
            if sf.file_sha256 != r["file_sha256"]:
                raise ValueError(f"{r['file']}: sha256 differs from the manifest's: a frozen stack file changed")
            attach_stack(model, sf)
            stack_versions[r["stack_id"]] = r["version"]
    model.eval()
    return {"model": model, "tokenizer": tok, "base_fingerprint": info.fingerprint, "base_version": info.fingerprint,
            "stack_versions": stack_versions,
            "domain_stacks": {d: domain_stacks(manifest, d) for d in manifest["domains_order"]}}


def load_base_only(setup: TrainingSetup, catalog=None) -> dict:
    """The profile's base with stack layers but no stacks (``base`` mode before any training).

    Returns:
        the same keys as :func:`load_run`, with no stacks.
    """
    from brainstacks_core.training.run import ensure_base, load_model

    info = ensure_base(setup, None, catalog)
    model, tok = load_model(setup, info)
    return {"model": model.eval(), "tokenizer": tok, "base_fingerprint": info.fingerprint,
            "base_version": info.fingerprint, "stack_versions": {}, "domain_stacks": {}}
