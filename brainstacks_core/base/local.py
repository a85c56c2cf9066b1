"""Local checkpoints as bases (``base.kind: local``): a safetensors folder or a GGUF file.

What belongs here: the content fingerprint of a local checkpoint (sha256 of its
files, each digest cached by the file's stat so an unchanged file is never
hashed twice), the one-time GGUF -> safetensors conversion into the store, and
loading the result (optionally 4-bit NF4) with every parameter frozen.

Identity: a folder's fingerprint is ``content_hash("local-folder", {file: sha256})``
over the files ``from_pretrained`` reads (config, ``*.safetensors``, tokenizer and
chat-template files); a GGUF base's is ``content_hash("gguf", sha256(file))``.
Neither depends on the path or the mtime: moving or touching the checkpoint
keeps it, changing one byte changes it (and so every stack's run key).

GGUF: transformers dequantizes a GGUF file on every ``from_pretrained`` (~20 s for
SmolLM2-135M on 2 cores). It is done once: the dequantized model and its
tokenizer (with the chat template from the GGUF metadata) are saved as
safetensors in ``<store>/base/<fingerprint>/`` (temp folder, then rename), with
``brainstacks_local.json`` listing each converted file's sha256; later loads read
that folder (~0.3 s). A converted folder whose files no longer match is rebuilt.

Pickle checkpoints (``*.bin``, ``*.pt``) are refused: safetensors only.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainstacks_core.base.config import LocalBaseConfig
from brainstacks_core.base.tiny_base import BaseModelInfo
from brainstacks_core.files import atomic_write_json, replace_dir, sha256_bytes, sha256_file
from brainstacks_core.lineage.versioning import canonical_json, code_version, content_hash

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

CONVERTED_MANIFEST = "brainstacks_local.json"
DIGESTS_FILE = "digests.json"
# What from_pretrained reads from a model folder (and therefore what the fingerprint covers).
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
               "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class LocalBaseError(ValueError):
    """A local checkpoint is missing, incomplete or in a refused format; the message names the file and key."""


class DigestCache:
    """sha256 of files, remembered per path by ``(size, mtime_ns, ctime_ns, inode)``.

    A file whose stat is unchanged is not read again; any write (or a touch) changes
    the stat and the file is hashed again, so a stale digest is never returned.
    ``ctime`` cannot be set back by a user, so restoring an mtime does not hide an edit.

    Args:
        path: JSON file the digests persist in (``None``: this process only).

    Attributes:
        hashed: Files hashed (read whole) by this instance.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path is not None else None
        self.hashed = 0
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            import json

            try:
                self._entries = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                logger.warning("digest cache %s is unreadable; every file is hashed again", self.path)

    def sha256(self, file: str | os.PathLike[str]) -> str:
        """The file's sha256, from the cache when its stat is unchanged."""
        p = Path(file).resolve()
        st = p.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self._entries.get(str(p))
        if entry is not None and entry.get("stat") == key:
            return entry["sha256"]
        digest = sha256_file(p)
        self.hashed += 1
        self._entries[str(p)] = {"stat": key, "sha256": digest}
        self._dirty = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically) if anything was hashed."""
        if self.path is not None and self._dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, self._entries)
            self._dirty = False


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder that loading reads (sorted), or a clear error.

    Raises:
        LocalBaseError: not a folder, no config.json, no tokenizer, or no
            safetensors weights (pickle weights are named and refused).
    """
    if not folder.is_dir():
        raise LocalBaseError(f"base.local.path: {folder} is not a folder")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    if "config.json" not in names:
        raise LocalBaseError(f"base.local.path: {folder} is not a model folder (no config.json); for a GGUF file "
                             "set base.local.gguf_file to its name")
    if not any(fnmatch(n, "*.safetensors") for n in names):
        pickles = [n for n in names if any(fnmatch(n, pat) for pat in PICKLE_WEIGHTS)]
        why = (f"{', '.join(pickles)} are pickle files, refused (convert them to safetensors)" if pickles
               else "no *.safetensors weights")
        raise LocalBaseError(f"base.local.path: {folder}: {why}")
    if not {"tokenizer.json", "tokenizer.model", "vocab.json"} & set(names):
        raise LocalBaseError(f"base.local.path: {folder} has no tokenizer (tokenizer.json): save one beside the "
                             "model")
    return [folder / n for n in names if any(fnmatch(n, pat) for pat in MODEL_FILES)]


def folder_digests(folder: Path, cache: DigestCache) -> dict[str, str]:
    """``{file name: sha256}`` of a model folder's files (see :func:`model_files`)."""
    return {p.name: cache.sha256(p) for p in model_files(folder)}


def local_fingerprint(cfg: LocalBaseConfig, repo_root: Path, cache: DigestCache) -> tuple[str, str, dict[str, str]]:
    """Fingerprint of a local checkpoint, without loading it.

    Returns:
        ``(fingerprint, sha256, files)``: the base's identity; one sha256 for the
        catalog (the GGUF file's, or that of the folder's digest listing); and
        ``{file name: sha256}`` of what was hashed.

    Raises:
        LocalBaseError: the path or the GGUF file does not exist, or the folder is incomplete.
    """
    root = cfg.resolve(repo_root)
    if cfg.gguf_file is None:
        files = folder_digests(root, cache)
        return content_hash("local-folder", files), sha256_bytes(canonical_json(files).encode()), files
    gguf = root / cfg.gguf_file
    if not gguf.is_file():
        hint = " (run `make smollm2` to fetch SmolLM2-135M-Instruct)" if "smollm2" in cfg.gguf_file.lower() else ""
        raise LocalBaseError(f"base.local.gguf_file: {gguf} does not exist{hint}")
    digest = cache.sha256(gguf)
    return content_hash("gguf", digest), digest, {gguf.name: digest}


def convert_gguf(gguf: Path, out_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Dequantize a GGUF file once into a safetensors model folder (temp folder, then rename).

    Args:
        gguf: The GGUF file.
        out_dir: Destination (``<store>/base/<fingerprint>``); replaced if it exists.
        manifest: Identity written to ``brainstacks_local.json`` beside the weights.

    Returns:
        ``{file name: sha256}`` of the converted folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s into %s (once; later loads read the safetensors)", gguf, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now; save_pretrained refuses a model that still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = folder_digests(tmp, DigestCache())
        atomic_write_json(tmp / CONVERTED_MANIFEST, {**manifest, "files": files})
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def _converted_ok(folder: Path, fingerprint: str, cache: DigestCache) -> bool:
    import json

    try:
        manifest = json.loads((folder / CONVERTED_MANIFEST).read_text(encoding="utf-8"))
        return manifest.get("fingerprint") == fingerprint and folder_digests(folder, cache) == manifest["files"]
    except (OSError, ValueError, KeyError):
        return False


def ensure_local_base(cfg: LocalBaseConfig, repo_root: Path, store_base: Path) -> tuple[BaseModelInfo, str]:
    """Fingerprint a local checkpoint and, for a GGUF file, convert it once into the store.

    Call under the store's base lock (``training.run.ensure_base`` holds it).

    Args:
        cfg: The ``base.local`` section.
        repo_root: What a relative ``cfg.path`` resolves against.
        store_base: ``<store>/base``: the digest cache and converted folders live here.

    Returns:
        ``(info, sha256)``: the base's identity (``info.path`` is the folder to load:
        the checkpoint folder itself or the converted one) and the sha256 recorded in
        the catalog.
    """
    cache = DigestCache(store_base / DIGESTS_FILE)
    fingerprint, digest, files = local_fingerprint(cfg, repo_root, cache)
    root = cfg.resolve(repo_root)
    config: dict[str, Any] = {"path": str(root), "gguf_file": cfg.gguf_file, "files": files}
    folder = root
    if cfg.gguf_file is not None:
        folder = store_base / fingerprint
        if _converted_ok(folder, fingerprint, cache):
            logger.info("converted GGUF base in %s is up to date (fingerprint %s)", folder, fingerprint)
        else:
            if folder.exists():
                logger.warning("converted base in %s does not match its manifest; converting again", folder)
            convert_gguf(root / cfg.gguf_file, folder, {
                "fingerprint": fingerprint, "source": "local", "gguf_file": cfg.gguf_file, "gguf_sha256": digest,
                "code_version": code_version(), "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})
            folder_digests(folder, cache)  # remember the new files' digests: the next check hashes nothing
    cache.save()
    return BaseModelInfo(str(folder), fingerprint, config, "local", None), digest


def load_local_base(folder: str | os.PathLike[str], cfg: LocalBaseConfig, device_map: Any = "cpu"
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a (converted) local safetensors folder with the section's 4-bit and dtype settings.

    Args:
        folder: ``BaseModelInfo.path`` from :func:`ensure_local_base`.
        cfg: The ``base.local`` section (``load_in_4bit``, ``compute_dtype``).
        device_map: Passed to ``from_pretrained`` (``{"": k}`` for CUDA device k).

    Returns:
        ``(model, tokenizer)``, every parameter frozen, in eval mode.
    """
    from brainstacks_core.base.loading import load_checkpoint

    return load_checkpoint(Path(folder), cfg.load_in_4bit, cfg.compute_dtype, device_map)
