"""Content versions: stable hashes of data, configs and code.

A version is a hex digest of a canonical JSON encoding, so the same inputs give the
same version on every machine. ``code_version`` hashes the project's own source
files (not the git commit, which a copied checkout may lack), prefixed with the
package version, so changing the code changes every downstream version.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

PACKAGE_VERSION = "0.1.0"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_CODE_PACKAGES = ("brainstacks_core", "data_contracts")


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot hash object of type {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON used for every hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default, ensure_ascii=False)


def content_hash(*parts: Any, length: int = 16) -> str:
    """Hash any JSON-able parts (dataclasses and pydantic models included).

    Args:
        *parts: Values to hash, in order.
        length: Number of hex characters to keep.

    Returns:
        A hex digest prefix of ``length`` characters.
    """
    digest = hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()
    return digest[:length]


def config_hash(config: Any) -> str:
    """Version of a step configuration (a dataclass, pydantic model or dict)."""
    return content_hash(config)


# The modules that decide what a processed dataset contains. Data versions hash only these,
# so editing training, plotting or orchestration code does not invalidate prepared data
# (and, through the data versions, every stack trained on it).
DATA_MODULES = ("brainstacks_core/data", "brainstacks_core/lineage/versioning.py", "brainstacks_core/lineage/context.py",
                "data_contracts")


def _hash_paths(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(_PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return f"{PACKAGE_VERSION}+{digest.hexdigest()[:12]}"


def _expand(entries: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for entry in entries:
        p = _PROJECT_ROOT / entry
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<hash of the project's core source files>``.

    Only ``brainstacks_core`` and ``data_contracts`` count: orchestration code
    (tasks, flows, CLI) does not change what an artifact contains.
    """
    return _hash_paths(_expand(_CODE_PACKAGES))


@functools.lru_cache(maxsize=1)
def data_code_version() -> str:
    """Like :func:`code_version`, over the data-path modules only (``DATA_MODULES``)."""
    return _hash_paths(_expand(DATA_MODULES))
