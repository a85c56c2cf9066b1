"""Benchmark decontamination: drop training rows that share a 13-gram with an eval set.

The run's evaluation sets (GSM8K test, MedQA, MedMCQA, MMLU-medical, LogiQA, ARC,
...) are tokenised once into a set of hashed word n-grams, each mapped to the
benchmark it came from. A training row is removed when any of its n-grams is in
the set; its removal reason names the benchmark, how many n-grams it shares and
one of them. Rows shorter than ``n`` tokens cannot match (as in GPT-3's
decontamination).

Template boilerplate is not contamination: an n-gram found in ``template_min_items``
or more items of the same benchmark (LogiQA's "which of the following, if true,
would most weaken the argument") is left out of the index, so a training row that
shares only a question stem stays, while a real near-duplicate, which shares
n-grams with one item, is still removed.

Memory: one dict entry per distinct n-gram hash of the eval sets (about 100 bytes
each; ~1.2 M n-grams for the shared profile's 10 k eval items is ~120 MB), built
once per process; nothing grows with the training rows.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from brainstacks_core.data.decontamination import tokenize
from brainstacks_core.data.formats import EVAL_TEXT

log = logging.getLogger(__name__)


def _powers(n: int) -> np.ndarray:
    return np.array([pow(1_000_003, k, 1 << 64) for k in range(n)], dtype=np.uint64)


def _gram_hashes(toks: list[str], n: int) -> np.ndarray:
    """64-bit hash of every n-gram of ``toks`` (``len(toks) - n + 1`` values), vectorised.

    A polynomial hash over per-token hashes, wrapping at 2**64: one sliding-window
    product instead of one Python tuple per position.
    """
    if len(toks) < n:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter(map(hash, toks), dtype=np.int64, count=len(toks)).view(np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    with np.errstate(over="ignore"):
        return (windows * _powers(n)).sum(axis=1, dtype=np.uint64)


@dataclass
class NgramIndex:
    """Hashed n-grams of every eval set -> the benchmark's name.

    Attributes:
        n: The n of the n-grams.
        grams: n-gram hash -> benchmark name (templates left out).
        templates: n-grams left out as template boilerplate, per benchmark.
    """

    n: int
    grams: dict[int, str]
    templates: dict[str, int] | None = None

    def shared(self, text: str) -> set[int]:
        """Hashes of the indexed n-grams that ``text`` holds."""
        return self.grams.keys() & set(_gram_hashes(tokenize(text), self.n).tolist())

    def find(self, text: str, ignore: set[int] | frozenset = frozenset(),
             shared: set[int] | None = None) -> tuple[str, str, int] | None:
        """``(benchmark, one shared n-gram, number of shared n-grams)``, or None.

        Args:
            text: A training row's text.
            ignore: n-gram hashes not to count (boilerplate found by the caller).
            shared: ``self.shared(text)`` when the caller has it already.
        """
        shared = (self.shared(text) if shared is None else shared) - ignore
        if not shared:
            return None
        toks = tokenize(text)
        for i, h in enumerate(_gram_hashes(toks, self.n).tolist()):
            if h in shared:
                return self.grams[h], " ".join(toks[i:i + self.n]), len(shared)
        return None  # pragma: no cover - shared is non-empty


def eval_texts(path: Path, fmt: str) -> list[str]:
    """The texts of one eval file (jsonl or a JSON list), read with the eval adapter."""
    if fmt not in EVAL_TEXT:
        raise ValueError(f"unknown eval format {fmt!r}; known: {sorted(EVAL_TEXT)}")
    raw = path.read_text(encoding="utf-8")
    rows = json.loads(raw) if raw.lstrip().startswith("[") else [json.loads(x) for x in raw.splitlines() if x.strip()]
    return [EVAL_TEXT[fmt](r) for r in rows]


def build_index(sets: dict[str, list[str]], n: int = 13, template_min_items: int | None = None) -> NgramIndex:
    """Index every eval text's n-grams under its benchmark name.

    Args:
        sets: Texts per benchmark, one per item.
        n: The n of the n-grams.
        template_min_items: An n-gram in at least this many items of one benchmark
            is template boilerplate and is left out (None keeps every n-gram).
    """
    grams: dict[int, str] = {}
    templates: dict[str, int] = {}
    for name, texts in sets.items():
        items = Counter()  # n-gram -> number of items of this benchmark holding it
        for text in tqdm(texts, desc=f"index {name}", disable=len(texts) < 5000, leave=False):
            items.update(set(_gram_hashes(tokenize(text), n).tolist()))
        boiler = {h for h, c in items.items() if template_min_items and c >= template_min_items}
        templates[name] = len(boiler)
        for h in items:
            if h not in boiler:
                grams.setdefault(h, name)
    log.info("benchmark index: %d %d-grams from %s; template n-grams left out: %s", len(grams), n, sorted(sets),
             templates)
    return NgramIndex(n=n, grams=grams, templates=templates)


def remove_contaminated(records: pd.DataFrame, index: NgramIndex, template_min_rows: int | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``records`` into clean rows and removed rows (with ``benchmark`` and ``reason``).

    Args:
        records: Training rows (``prompt``, ``response``, ``record_id``).
        index: The eval sets' n-grams.
        template_min_rows: A benchmark n-gram shared by this many distinct training
            records is boilerplate both sides use (a stem the training format and the
            benchmark share, e.g. "question: which of the following ... weaken the
            argument"), not a copied item: it is not counted. None counts every one.
    """
    if records.empty or not index.grams:
        return records, records.iloc[0:0].assign(benchmark=pd.Series(dtype=str), reason=pd.Series(dtype=str))
    texts = (records["prompt"] + "\n" + records["response"]).tolist()
    shared = [index.shared(t) for t in texts]
    ignore: set[int] = set()
    if template_min_rows:
        first = dict(zip(records["record_id"], shared))  # distinct records: copies of one row count once
        counts = Counter(h for hs in first.values() for h in hs)
        ignore = {h for h, c in counts.items() if c >= template_min_rows}
    found = [index.find(t, ignore, sh) if sh else None for t, sh in zip(texts, shared)]
    hit = pd.Series([f is not None for f in found], index=records.index)
    removed = records[hit].copy()
    removed["benchmark"] = [f[0] for f in found if f is not None]
    removed["reason"] = [f"shares {f[2]} {index.n}-gram(s) with benchmark {f[0]}, e.g. '{f[1]}'"
                         for f in found if f is not None]
    return records[~hit], removed
