"""Keyword decontamination: find rows that belong to another domain and move or drop them.

Every domain has a keyword lexicon (single words or short phrases). One compiled
matcher scores a row against every domain in a single pass: the row is tokenised
once, its 1..n-grams are looked up in one dict ``phrase -> domain indices``. A row
whose best foreign score reaches its own score plus ``margin`` (and at least
``min_score``) moves to that domain when the domain is part of the run, and is
dropped otherwise. Every decision keeps its reason and the top keywords.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

_TOKEN = re.compile(r"[a-z0-9_#+]+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, ``_ # +``)."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Decision:
    """What happened to one row: ``keep``, ``move`` or ``drop``."""

    action: str
    target: str | None
    own_score: int
    target_score: int
    top_keywords: str
    reason: str


class KeywordMatcher:
    """All lexicons compiled into one phrase table.

    Args:
        lexicons: Keywords per domain (phrases of up to a few words).
    """

    def __init__(self, lexicons: dict[str, list[str]]) -> None:
        self.domains = sorted(lexicons)
        self._index = {d: i for i, d in enumerate(self.domains)}
        self._table: dict[str, list[int]] = {}
        for d, words in lexicons.items():
            for w in words:
                phrase = " ".join(tokenize(w))
                if phrase and self._index[d] not in self._table.setdefault(phrase, []):
                    self._table[phrase].append(self._index[d])
        self._lengths = sorted({p.count(" ") + 1 for p in self._table})

    def hits(self, text: str) -> list[tuple[str, list[int]]]:
        """Every lexicon phrase found in ``text`` with its domain indices (one pass)."""
        toks = tokenize(text)
        table, out = self._table, []
        for n in self._lengths:
            grams = toks if n == 1 else [" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)]
            out.extend((g, table[g]) for g in grams if g in table)
        return out

    def score(self, text: str) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
        """Hit counts per domain (in ``self.domains`` order) and the hits themselves."""
        scores = np.zeros(len(self.domains), dtype=np.int64)
        found = self.hits(text)
        for _, idx in found:
            scores[idx] += 1
        return scores, found


def decide(matcher: KeywordMatcher, text: str, domain: str, run_domains: set[str],
           margin: int, min_score: int) -> Decision:
    """Keep, move or drop one row of ``domain``."""
    scores, found = matcher.score(text)
    own = int(scores[matcher._index[domain]]) if domain in matcher._index else 0
    best_i = -1
    for i in np.argsort(-scores, kind="stable"):
        if matcher.domains[i] != domain:
            best_i = int(i)
            break
    if best_i < 0:
        return Decision("keep", None, own, 0, "", "")
    best, target = int(scores[best_i]), matcher.domains[best_i]
    if best < min_score or best < own + margin:
        return Decision("keep", None, own, best, "", "")
    top = Counter(p for p, idx in found if best_i in idx).most_common(5)
    kw = ", ".join(f"{p}×{c}" for p, c in top)
    why = f"keyword score {target}={best} vs {domain}={own} (margin {margin}); top: {kw}"
    if target in run_domains:
        return Decision("move", target, own, best, kw, why)
    return Decision("drop", target, own, best, kw, why + f"; {target} is not part of this run")


def decontaminate(records: pd.DataFrame, lexicons: dict[str, list[str]], run_domains: list[str],
                  margin: int, min_score: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reassign or drop cross-domain rows of every domain in one pass.

    Args:
        records: Stripped records of every domain (``domain``, ``prompt``, ``response``, ...).
        lexicons: Keywords per domain.
        run_domains: Domains of this run (rows can move only into these).
        margin: Hits by which a foreign domain must beat the row's own domain.
        min_score: Minimum foreign hits before anything happens.

    Returns:
        ``(kept, moves, dropped)``: kept rows with ``domain`` updated and
        ``origin_domain`` added; one row per move; one row per drop (with reason).
    """
    if records.empty or not lexicons:
        kept = records.assign(origin_domain=records["domain"])
        empty = pd.DataFrame(columns=["record_id", "source_uri", "source_row_key", "from_domain", "to_domain",
                                      "own_score", "target_score", "top_keywords", "reason"])
        return kept, empty, empty.copy()
    matcher = KeywordMatcher(lexicons)
    run = set(run_domains)
    texts = (records["prompt"] + "\n" + records["response"]).tolist()
    decisions = [decide(matcher, t, d, run, margin, min_score) for t, d in zip(texts, records["domain"].tolist())]
    log_rows = [{"record_id": r, "source_uri": u, "source_row_key": k, "from_domain": d, "to_domain": x.target,
                 "own_score": x.own_score, "target_score": x.target_score, "top_keywords": x.top_keywords,
                 "reason": x.reason, "action": x.action}
                for r, u, k, d, x in zip(records["record_id"], records["source_uri"], records["source_row_key"],
                                         records["domain"], decisions) if x.action != "keep"]
    log = pd.DataFrame(log_rows, columns=["record_id", "source_uri", "source_row_key", "from_domain", "to_domain",
                                          "own_score", "target_score", "top_keywords", "reason", "action"])
    actions = np.array([x.action for x in decisions])
    kept = records[actions != "drop"].copy()
    kept["origin_domain"] = kept["domain"]
    targets = [x.target for x, a in zip(decisions, actions) if a != "drop"]
    moved = np.array([a == "move" for a in actions if a != "drop"], dtype=bool)
    if moved.any():
        kept.loc[kept.index[moved], "domain"] = [t for t, m in zip(targets, moved) if m]
    moves = log[log["action"] == "move"].drop(columns="action").reset_index(drop=True)
    dropped = log[log["action"] == "drop"].drop(columns="action").reset_index(drop=True)
    return kept.reset_index(drop=True), moves, dropped
