"""Keyword decontamination: find rows that belong to another domain and move, drop or report them.

Every domain has a keyword lexicon of whole words or phrases. An entry is matched
case-insensitively unless written ``=word``, which matches that exact case only
(``=class`` is Python's keyword; "Class" and "CLASS Act" are not). An entry
``a|b|c`` is one signal however many of its alternatives occur (``patient|patients``,
``python|java|javascript``). Evidence is the number of **distinct** entries found:
a word repeated eight times is one signal, not eight.

The decision also weighs what the source says about itself (``SourceConfig.mixed``):

* a row of a **mixed** source (ShareGPT-style chat) moves to a foreign domain when
  that domain's distinct keywords reach ``min_score`` and beat the row's own by
  ``margin``;
* a row of a **single-domain** source (GSM8K, PubMedQA, LogiQA) is only *flagged*
  (kept, reported) on that evidence, and moves only on overwhelming evidence
  (``single_domain_min_score`` distinct keywords, and the margin).

A foreign domain outside the run means the row is dropped instead of moved. Every
decision keeps its evidence: the distinct keywords of both domains.

Scoring is one pass per row: the text is tokenised once (lower-cased and as
written), single-word entries are a set intersection, phrases a substring test on
the joined tokens. Memory: the compiled lexicon (a few hundred strings); nothing
grows with the rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

_TOKEN = re.compile(r"[a-z0-9_#+]+")
_TOKEN_CASED = re.compile(r"[A-Za-z0-9_#+]+")
LOG_COLUMNS = ["record_id", "source_uri", "source_row_key", "from_domain", "to_domain", "own_score", "target_score",
               "top_keywords", "own_keywords", "reason"]


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, ``_ # +``)."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Decision:
    """What happened to one row: ``keep``, ``flag`` (kept, reported), ``move`` or ``drop``."""

    action: str
    target: str | None
    own_score: int
    target_score: int
    top_keywords: str
    own_keywords: str
    reason: str


class KeywordMatcher:
    """All lexicons compiled into word sets and phrase lists.

    Args:
        lexicons: Entries per domain: words or phrases; ``=entry`` is case-sensitive.
    """

    def __init__(self, lexicons: dict[str, list[str]]) -> None:
        self.domains = sorted(lexicons)
        self._index = {d: i for i, d in enumerate(self.domains)}
        # (cased?) -> alternative (space-joined tokens) -> [(domain index, entry label)]
        self._words: dict[bool, dict[str, list[tuple[int, str]]]] = {False: {}, True: {}}
        self._phrases: dict[bool, dict[str, list[tuple[int, str]]]] = {False: {}, True: {}}
        for d, entries in lexicons.items():
            for entry in entries:
                for alt in entry.split("|"):
                    cased = alt.startswith("=")
                    toks = _TOKEN_CASED.findall(alt[1:]) if cased else tokenize(alt)
                    if not toks:
                        continue
                    table = (self._phrases if len(toks) > 1 else self._words)[cased]
                    key = f" {' '.join(toks)} " if len(toks) > 1 else toks[0]  # phrases padded: whole words
                    hit = (self._index[d], entry, alt.strip())
                    if hit not in table.setdefault(key, []):
                        table[key].append(hit)

    def hits(self, text: str) -> dict[int, list[str]]:
        """Distinct lexicon entries found in ``text``, by domain index (one pass).

        Each entry found is shown by its alternative that matched (the first in
        sorted order when several did), so ``python|java`` appears as ``java``.
        """
        out: dict[int, dict[str, str]] = {}  # domain -> entry -> the alternative shown as evidence
        cased_joined = " ".join(_TOKEN_CASED.findall(text))  # one regex pass; lower-casing is one C call
        for cased in (False, True):
            words, phrases = self._words[cased], self._phrases[cased]
            if not words and not phrases:
                continue
            joined = cased_joined if cased else cased_joined.lower()
            found = [words[w] for w in set(joined.split()).intersection(words)]
            if phrases:
                padded = f" {joined} "
                found.extend(hit for p, hit in phrases.items() if p in padded)
            for hits in found:
                for i, entry, alt in hits:
                    seen = out.setdefault(i, {})
                    seen[entry] = min(seen.get(entry, alt), alt)  # deterministic whatever the set order
        return {i: sorted(v.values()) for i, v in out.items()}

    def score(self, text: str) -> tuple[np.ndarray, dict[int, list[str]]]:
        """Distinct-keyword counts per domain (``self.domains`` order) and the keywords."""
        found = self.hits(text)
        scores = np.zeros(len(self.domains), dtype=np.int64)
        for i, kws in found.items():
            scores[i] = len(kws)
        return scores, found


def decide(matcher: KeywordMatcher, text: str, domain: str, run_domains: set[str], margin: int, min_score: int,
           mixed: bool = True, single_domain_min_score: int | None = None) -> Decision:
    """Keep, flag, move or drop one row of ``domain``.

    Args:
        matcher: The compiled lexicons.
        text: Prompt and response of the row.
        domain: The row's domain (from its source).
        run_domains: Domains of this run (a row can move only into these).
        margin: Distinct keywords by which a foreign domain must beat the own domain.
        min_score: Distinct foreign keywords that count as evidence.
        mixed: Whether the row's source may hold other domains' rows.
        single_domain_min_score: Evidence needed to move a row of a single-domain source.
    """
    scores, found = matcher.score(text)
    own_i = matcher._index.get(domain)
    own = int(scores[own_i]) if own_i is not None else 0
    order = [int(i) for i in np.argsort(-scores, kind="stable") if matcher.domains[i] != domain]
    if not order or scores[order[0]] < min_score or scores[order[0]] < own + margin:
        return Decision("keep", None, own, int(scores[order[0]]) if order else 0, "", "", "")
    best_i = order[0]
    best, target = int(scores[best_i]), matcher.domains[best_i]
    kw = ", ".join(sorted(found[best_i]))
    own_kw = ", ".join(sorted(found.get(own_i, []))) if own_i is not None else ""
    need = min_score if mixed else max(min_score, single_domain_min_score or min_score)
    why = (f"{best} distinct {target} keywords vs {own} {domain} (margin {margin}, "
           f"{'mixed' if mixed else 'single-domain'} source needs {need}): {kw}"
           + (f"; own: {own_kw}" if own_kw else ""))
    if best < need:
        return Decision("flag", target, own, best, kw, own_kw, f"looks like {target}, kept: {why}")
    if target in run_domains:
        return Decision("move", target, own, best, kw, own_kw, why)
    return Decision("drop", target, own, best, kw, own_kw, why + f"; {target} is not part of this run")


def decontaminate(records: pd.DataFrame, lexicons: dict[str, list[str]], run_domains: list[str],
                  margin: int, min_score: int, mixed_sources: set[str] | None = None,
                  single_domain_min_score: int | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reassign, drop or report cross-domain rows of every domain in one pass.

    Args:
        records: Stripped records of every domain (``domain``, ``prompt``, ``response``, ``source_uri``, ...).
        lexicons: Keywords per domain.
        run_domains: Domains of this run (rows can move only into these).
        margin: Distinct keywords by which a foreign domain must beat the row's own domain.
        min_score: Distinct foreign keywords that count as evidence.
        mixed_sources: ``source_uri`` of the sources declared ``mixed``; ``None``
            treats every source as mixed (the rule before source priors).
        single_domain_min_score: Evidence to move a row of a single-domain source.

    Returns:
        ``(kept, moves, dropped, flagged)``: kept rows with ``domain`` updated and
        ``origin_domain`` added; one row per move, per drop and per flag (kept,
        reported), each with both domains' keywords and the reason.
    """
    empty = pd.DataFrame(columns=LOG_COLUMNS)
    if records.empty or not lexicons:
        return records.assign(origin_domain=records["domain"]), empty, empty.copy(), empty.copy()
    matcher = KeywordMatcher(lexicons)
    run = set(run_domains)
    texts = (records["prompt"] + "\n" + records["response"]).tolist()
    mixed = ([True] * len(records) if mixed_sources is None
             else records["source_uri"].isin(mixed_sources).tolist())
    decisions = [decide(matcher, t, d, run, margin, min_score, m, single_domain_min_score)
                 for t, d, m in zip(texts, records["domain"].tolist(), mixed)]
    actions = np.array([x.action for x in decisions])
    log = pd.DataFrame([{"record_id": r, "source_uri": u, "source_row_key": k, "from_domain": d, "to_domain": x.target,
                         "own_score": x.own_score, "target_score": x.target_score, "top_keywords": x.top_keywords,
                         "own_keywords": x.own_keywords, "reason": x.reason, "action": x.action}
                        for r, u, k, d, x in zip(records["record_id"], records["source_uri"],
                                                 records["source_row_key"], records["domain"], decisions)
                        if x.action != "keep"], columns=LOG_COLUMNS + ["action"])
    kept = records[actions != "drop"].copy()
    kept["origin_domain"] = kept["domain"]
    move = actions[actions != "drop"] == "move"
    if move.any():
        kept.loc[kept.index[move], "domain"] = [x.target for x in decisions if x.action == "move"]

    def part(action: str) -> pd.DataFrame:
        return log[log["action"] == action].drop(columns="action").reset_index(drop=True)

    return kept.reset_index(drop=True), part("move"), part("drop"), part("flag")
