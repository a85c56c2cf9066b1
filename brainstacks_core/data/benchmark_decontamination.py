"""Benchmark decontamination: drop training rows that share a 13-gram with an eval set.

The run's evaluation sets (GSM8K test, MedQA, MedMCQA, MMLU-medical, LogiQA, ARC,
...) are tokenised once into a set of hashed word n-grams, each mapped to the
benchmark it came from. A training row is removed when any of its n-grams is in
the set; its removal reason names the benchmark and the matching n-gram.
Rows shorter than ``n`` tokens cannot match (as in GPT-3's decontamination).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from brainstacks_core.data.decontamination import tokenize
from brainstacks_core.data.formats import EVAL_TEXT

log = logging.getLogger(__name__)


@dataclass
class NgramIndex:
    """Hashed n-grams of every eval set -> the benchmark's name."""

    n: int
    grams: dict[int, str]

    def find(self, text: str) -> tuple[str, str] | None:
        """``(benchmark, n-gram text)`` of the first shared n-gram, or None."""
        toks = tokenize(text)
        n, grams = self.n, self.grams
        for i in range(len(toks) - n + 1):
            gram = tuple(toks[i:i + n])
            name = grams.get(hash(gram))
            if name is not None:
                return name, " ".join(gram)
        return None


def eval_texts(path: Path, fmt: str) -> list[str]:
    """The texts of one eval file (jsonl or a JSON list), read with the eval adapter."""
    if fmt not in EVAL_TEXT:
        raise ValueError(f"unknown eval format {fmt!r}; known: {sorted(EVAL_TEXT)}")
    raw = path.read_text(encoding="utf-8")
    rows = json.loads(raw) if raw.lstrip().startswith("[") else [json.loads(x) for x in raw.splitlines() if x.strip()]
    return [EVAL_TEXT[fmt](r) for r in rows]


def build_index(sets: dict[str, list[str]], n: int = 13) -> NgramIndex:
    """Index every eval text's n-grams under its benchmark name."""
    grams: dict[int, str] = {}
    for name, texts in sets.items():
        for text in tqdm(texts, desc=f"index {name}", disable=len(texts) < 5000, leave=False):
            toks = tokenize(text)
            for i in range(len(toks) - n + 1):
                grams.setdefault(hash(tuple(toks[i:i + n])), name)
    log.info("benchmark index: %d %d-grams from %s", len(grams), n, sorted(sets))
    return NgramIndex(n=n, grams=grams)


def remove_contaminated(records: pd.DataFrame, index: NgramIndex) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``records`` into clean rows and removed rows (with ``benchmark`` and ``reason``)."""
    if records.empty or not index.grams:
        return records, records.iloc[0:0].assign(benchmark=pd.Series(dtype=str), reason=pd.Series(dtype=str))
    texts = (records["prompt"] + "\n" + records["response"]).tolist()
    found = [index.find(t) for t in texts]
    hit = pd.Series([f is not None for f in found], index=records.index)
    removed = records[hit].copy()
    removed["benchmark"] = [f[0] for f in found if f is not None]
    removed["reason"] = [f"shares a {index.n}-gram with benchmark {f[0]}: '{f[1]}'" for f in found if f is not None]
    return records[~hit], removed
