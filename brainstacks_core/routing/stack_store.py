"""StackStore: a run's frozen stacks kept on disk, attached to the model on demand (paper 3.6, inference).

What belongs here: which stacks of a run are attached to the model right now, loading
and verifying a stack file when a prompt is routed to it, and detaching the least
recently used ones when the byte budget is exceeded. Routing itself lives in
:mod:`brainstacks_core.routing.superposition`.

* **Entries** come from the run manifest (:meth:`StackStore.from_manifest`): per
  frozen round its file, the file's sha256 recorded when it was written, its domain
  and version. Nothing is read until a stack is asked for.
* **Checksum once per file version.** The first load of a file hashes it and compares
  with the manifest (:func:`~brainstacks_core.stacks.stack_io.load_stack` with
  ``expected_sha256``); a mismatch is refused with
  :class:`~brainstacks_core.stacks.stack_io.StackFileError` naming the file. The
  verified version is remembered as ``(size, mtime_ns, ctime_ns, inode) -> sha256``;
  loading the same version again (after an eviction) reads and parses the file but
  hashes nothing. A file whose stat changed is hashed again (and refused if its bytes
  differ from the manifest); a file that changes while it is read is hashed too.
* **LRU by bytes.** ``budget_bytes`` bounds the bytes of the attached stacks' forward
  tensors. Before and after each load, the least recently used stacks not needed by
  the current call are detached (:func:`~brainstacks_core.stacks.inject.remove_stack`).
  Stacks needed by one call are always attached, even when they alone exceed the
  budget (then a warning is logged and ``over_budget`` counted). A hit attaches
  nothing and rebuilds nothing; a miss or an eviction reallocates each layer's
  :class:`~brainstacks_core.stacks.frozen_bank.FrozenBank` buffers once (what the bank
  requires to stay one contiguous buffer per part).
* Stacks are attached **inference-only** (A, B with its projection folded in, router);
  the host-side null-space basis and router noise are not kept.

Bytes at Gemma-3-12B shapes (48 layers x 7 projections, E=4, r=16, bf16): one stack
holds 538 MB of forward tensors (see the FrozenBank docstring), so the default budget
(``router.store_budget_mb`` = 4096 MB) keeps 7 of 10 stacks; all 10 need 5.4 GB. A
load briefly holds the file's bytes plus its tensors (the file also carries the
572 MB fp32 basis: ~1.7 GB transient per stack). The verified-version record is
~200 B per file; nothing here grows with tokens seen.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from brainstacks_core.stacks.inject import remove_stack, stacked_layers
from brainstacks_core.stacks.stack_io import StackFileError, attach_stack, load_stack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackEntry:
    """One stack file of a run, as its manifest records it.

    Attributes:
        stack_id: the stack's id (its tensors' id in every layer).
        domain: the domain it belongs to.
        path: its ``.safetensors`` file.
        sha256: the whole file's sha256 recorded when it was written.
        version: its catalog version.
        blake3: the whole file's BLAKE3 recorded when it was written (manifests before it: None,
            and sha256 is the check).
    """

    stack_id: str
    domain: str
    path: Path
    sha256: str
    version: str = ""
    blake3: str | None = None


@dataclass
class StoreStats:
    """Counters of a :class:`StackStore` (since it was made).

    Attributes:
        hits: stacks asked for that were already attached.
        misses: stacks asked for that had to be loaded.
        evictions: stacks detached to stay within the budget.
        hashes: files hashed (a first load, or a changed file); a warm re-load adds none.
        load_seconds: reading, hashing and parsing stack files.
        attach_seconds: attaching and detaching (the banks' reallocations).
        bytes_held: forward-tensor bytes of the attached stacks now.
        peak_bytes: the most ever held.
        over_budget: calls whose needed stacks alone exceeded the budget.
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    hashes: int = 0
    load_seconds: float = 0.0
    attach_seconds: float = 0.0
    bytes_held: int = 0
    peak_bytes: int = 0
    over_budget: int = 0


def _file_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file: size, mtime, ctime (no ``utime`` can reset it), inode."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def stack_nbytes(model: nn.Module, stack_id: str) -> int:
    """Bytes of one attached stack's tensors over every layer (A, B, router, and basis/noise if kept)."""
    total = 0
    for layer in stacked_layers(model).values():
        w = layer.frozen[stack_id]
        for t in (w.lora_A, w.lora_B, w.router, w.basis, w.noise):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def forward_bytes_from_header(path: Path, model: nn.Module) -> int:
    """Bytes a stack file's A, B and router will hold once attached, from its header only (no tensor read)."""
    layer = next(iter(stacked_layers(model).values()))
    size = torch.empty(0, dtype=layer.config.torch_frozen_dtype).element_size()
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) * size for k in f.keys()
                   if k.rpartition(".")[2] in ("lora_A", "lora_B", "router"))


class StackStore:
    """Attach a run's stacks on demand, verified once per file version, LRU by bytes.

    Args:
        model: the base with injected (empty) stack layers.
        entries: ``stack_id -> StackEntry``.
        budget_bytes: most bytes of attached stacks kept between calls (None: no limit).
        base_fingerprint: when given, every file must have been trained on this base.
    """

    def __init__(self, model: nn.Module, entries: Mapping[str, StackEntry], budget_bytes: int | None = None,
                 base_fingerprint: str | None = None) -> None:
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.model, self.entries = model, dict(entries)
        self.budget_bytes, self.base_fingerprint = budget_bytes, base_fingerprint
        self.stats = StoreStats()
        self._lru: OrderedDict[str, int] = OrderedDict()  # attached stack id -> bytes, oldest first
        self._verified: dict[Path, tuple[tuple[int, int, int, int], str]] = {}
        self._sizes: dict[str, int] = {}  # bytes of a stack once attached (before: its file size bounds it)
        self._lock = threading.Lock()

    @classmethod
    def from_manifest(cls, model: nn.Module, manifest: Mapping, budget_bytes: int | None = None,
                      base_fingerprint: str | None = None) -> "StackStore":
        """Entries of every frozen round of a run manifest (``training/<run>/<key>/manifest.json``)."""
        entries = {}
        for dom in manifest["domains_order"]:
            for r in manifest["domains"].get(dom, {}).get("rounds", []):
                if r["status"] == "frozen":
                    entries[r["stack_id"]] = StackEntry(r["stack_id"], dom, Path(r["file"]), r["file_sha256"],
                                                        r.get("version", ""), r.get("file_blake3"))
        return cls(model, entries, budget_bytes, base_fingerprint or manifest.get("base_fingerprint"))

    # ----------------------------------------------------------------- queries
    @property
    def attached(self) -> list[str]:
        """Attached stack ids, least recently used first."""
        return list(self._lru)

    def domain_stacks(self) -> dict[str, list[str]]:
        """``domain -> stack ids`` of every entry, in manifest order."""
        out: dict[str, list[str]] = {}
        for e in self.entries.values():
            out.setdefault(e.domain, []).append(e.stack_id)
        return out

    def summary(self) -> str:
        """One line: hits, misses, evictions, loads and their time, bytes held against the budget."""
        s = self.stats
        budget = "no budget" if self.budget_bytes is None else f"budget {self.budget_bytes / 1e6:.1f} MB"
        return (f"stack store: {s.hits} hits, {s.misses} misses, {s.evictions} evictions; {s.misses} loads in "
                f"{1e3 * s.load_seconds:.1f} ms ({s.hashes} verified by hash, the rest a known file version), "
                f"attach/detach {1e3 * s.attach_seconds:.1f} ms; {s.bytes_held / 1e6:.2f} MB held "
                f"({len(self._lru)} stacks), {budget}")

    # --------------------------------------------------------------- loading
    def ensure(self, stack_ids: Iterable[str]) -> list[str]:
        """Attach every stack in ``stack_ids`` (loading the missing ones), evicting LRU others over budget.

        Returns:
            The ids that had to be loaded (the misses of this call).

        Raises:
            KeyError: an id is not a stack of this run.
            StackFileError: a file is unreadable, differs from the manifest, or belongs to another base.
        """
        need = list(dict.fromkeys(stack_ids))
        unknown = [s for s in need if s not in self.entries]
        if unknown:
            raise KeyError(f"not stacks of this run: {unknown}; known: {sorted(self.entries)}")
        loaded = []
        with self._lock:
            for sid in need:
                if sid in self._lru:
                    self._lru.move_to_end(sid)
                    self.stats.hits += 1
            for sid in need:
                if sid in self._lru:
                    continue
                self.stats.misses += 1
                self._evict(keep=set(need), incoming=self._expected_bytes(sid))
                self._attach(sid)
                loaded.append(sid)
            self._evict(keep=set(need), incoming=0)
            if self.budget_bytes is not None and self.stats.bytes_held > self.budget_bytes:
                self.stats.over_budget += 1
                log.warning("stack store: the %d stacks one call needs hold %.1f MB, over the %.1f MB budget",
                            len(need), self.stats.bytes_held / 1e6, self.budget_bytes / 1e6)
        return loaded

    def evict(self, stack_id: str) -> None:
        """Detach one stack now if attached (its verified file version is still remembered)."""
        with self._lock:
            if stack_id in self._lru:
                self._detach(stack_id)

    def _expected_bytes(self, stack_id: str) -> int:
        """Bytes a stack will hold: measured at its last load, else counted from its file's header."""
        if stack_id not in self._sizes:
            try:
                self._sizes[stack_id] = forward_bytes_from_header(self.entries[stack_id].path, self.model)
            except (OSError, ValueError, SafetensorError):
                return 0  # the load reports the unreadable file
        return self._sizes[stack_id]

    def _evict(self, keep: set[str], incoming: int) -> None:
        """Detach least recently used stacks outside ``keep`` until ``incoming`` more bytes fit."""
        if self.budget_bytes is None:
            return
        for sid in [s for s in self._lru if s not in keep]:
            if self.stats.bytes_held + incoming <= self.budget_bytes:
                break
            self._detach(sid)
            self.stats.evictions += 1

    def _detach(self, stack_id: str) -> None:
        t0 = time.perf_counter()
        remove_stack(self.model, stack_id)
        self.stats.bytes_held -= self._lru.pop(stack_id)
        self.stats.attach_seconds += time.perf_counter() - t0
        log.debug("stack store: detached %s", stack_id)

    def _read(self, entry: StackEntry):
        """Load one file, hashing it only when this file version was not verified before."""
        path = entry.path
        try:
            key = _file_key(path.stat())
        except OSError as exc:
            raise StackFileError(f"{path}: stack file of {entry.stack_id!r} is missing ({exc})") from exc
        known = self._verified.get(path)
        if known is not None and known == (key, entry.sha256):
            sf = load_stack(path, base_fingerprint=self.base_fingerprint, verified_sha256=entry.sha256)
            if _file_key(path.stat()) == key:
                return sf
            log.warning("%s changed while it was read: verifying it again", path)
        self._verified.pop(path, None)
        sf = load_stack(path, base_fingerprint=self.base_fingerprint, expected_sha256=entry.sha256,
                        expected_blake3=entry.blake3)
        self.stats.hashes += 1
        after = _file_key(path.stat())
        if after == key:  # the bytes hashed are this version's
            self._verified[path] = (key, entry.sha256)
        return sf

    def _attach(self, stack_id: str) -> None:
        entry = self.entries[stack_id]
        t0 = time.perf_counter()
        sf = self._read(entry)
        if sf.stack_id != stack_id:
            raise StackFileError(f"{entry.path}: holds stack {sf.stack_id!r}, the manifest says {stack_id!r}")
        t1 = time.perf_counter()
        attach_stack(self.model, sf, inference_only=True)
        del sf
        nbytes = stack_nbytes(self.model, stack_id)
        self._lru[stack_id] = self._sizes[stack_id] = nbytes
        self.stats.bytes_held += nbytes
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.stats.bytes_held)
        self.stats.load_seconds += t1 - t0
        self.stats.attach_seconds += time.perf_counter() - t1
        log.info("stack store: loaded %s (%.2f MB) in %.1f ms", stack_id, nbytes / 1e6, 1e3 * (t1 - t0))
