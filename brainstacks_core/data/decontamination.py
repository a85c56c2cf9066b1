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

**Learnt evidence** (``ClassifierEvidence``, from ``domain_classifier``): a classifier
trained on the labelled sources gives each row of a mixed source a probability per
domain. Such a row also moves when another run domain is the most probable one with
probability >= the calibrated ``threshold``, unless its own keywords beat that
domain's by ``margin`` (then it is only flagged). A keyword move of a single-domain
row needs the classifier to agree (probability >= ``threshold``), else it is only
flagged; the classifier alone never moves a single-domain row (it flags it). When the
classifier's target has no keyword (and p < ``sure``), the row is flagged, unless
``keyword_target``: then it moves to the one foreign domain whose keywords beat every
other domain's and the own one (the classifier says "foreign", the keywords say where). Each
decision records the classifier's probability of the target and of the own domain,
and which evidence decided (``keywords``, ``classifier`` or ``both``).

Scoring is one pass per row: the text is tokenised once (lower-cased and as
written), single-word entries are a set intersection, phrases a substring test on
the joined tokens. Memory: the compiled lexicon (a few hundred strings); nothing
grows with the rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

_TOKEN = re.compile(r"[a-z0-9_#+]+")
_TOKEN_CASED = re.compile(r"[A-Za-z0-9_#+]+")
LOG_COLUMNS = ["record_id", "source_uri", "source_row_key", "from_domain", "to_domain", "own_score", "target_score",
               "top_keywords", "own_keywords", "probability", "own_probability", "evidence", "reason"]


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
    probability: float | None = None
    own_probability: float | None = None
    evidence: str = "keywords"


@dataclass(frozen=True)
class ClassifierEvidence:
    """A learnt domain classifier as decontamination sees it.

    Attributes:
        classes: Domains, in the order of the probability columns.
        threshold: Probability a foreign domain needs (calibrated on held-out labelled rows).
        score: Rows (``prompt``, ``response``, ``record_id``, ``source_uri``) -> ``[N, C]`` probabilities.
        version: The classifier's artifact version (written into each reason).
        sure: Probability at which the classifier moves a row without one keyword of the target.
        keyword_target: When the classifier's foreign target has no keyword (and p < ``sure``), move
            the row to the one foreign domain whose keywords beat all others, own included.
    """

    classes: list[str]
    threshold: float
    score: Callable[[pd.DataFrame], np.ndarray]
    version: str = ""
    sure: float = 0.9
    keyword_target: bool = False


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


def _keyword_target(scores: np.ndarray, matcher: KeywordMatcher, domain: str, own_score: int,
                    run_domains: set[str], classes: dict[str, int]) -> str | None:
    """The one foreign run domain whose distinct keywords beat every other domain's (own included), if any."""
    best, second, name = 0, 0, None
    for i, d in enumerate(matcher.domains):
        if d == domain:
            continue
        if scores[i] > best:
            best, second, name = int(scores[i]), best, d
        elif scores[i] > second:
            second = int(scores[i])
    if name is None or best <= max(second, own_score) or name not in run_domains or name not in classes:
        return None
    return name


def combine(x: Decision, p: np.ndarray, clf: ClassifierEvidence, matcher: KeywordMatcher, text: str, domain: str,
            run_domains: set[str], margin: int, mixed: bool) -> Decision:
    """Join a keyword decision with the classifier's probabilities ``p`` ``[C]`` for the same row.

    Args:
        x: The keyword decision.
        p: The row's probability per domain (``clf.classes`` order).
        clf: The classifier (classes, threshold).
        matcher: The compiled lexicons (keywords of the classifier's target are recorded too).
        text: The row's text.
        domain: The row's own domain.
        run_domains: Domains of this run.
        margin: Keywords by which the own domain must beat a target to veto a classifier move.
        mixed: Whether the row's source is mixed.
    """
    idx = {c: i for i, c in enumerate(clf.classes)}
    own_p = float(p[idx[domain]]) if domain in idx else None

    def prob(target: str | None) -> float | None:
        return float(p[idx[target]]) if target in idx else None

    def note(target: str | None) -> str:
        q = prob(target)
        return (f"classifier {clf.version + ' ' if clf.version else ''}p({target})={q:.2f} "
                f"(threshold {clf.threshold:.2f}, own {domain} {own_p if own_p is not None else 0:.2f})"
                if q is not None else "classifier: no such class")

    if x.action in ("move", "drop"):
        q = prob(x.target)
        agrees = q is not None and q >= clf.threshold
        if x.action == "move" and not mixed and not agrees:
            return replace(x, action="flag", probability=q, own_probability=own_p, evidence="keywords",
                           reason=f"looks like {x.target}, kept: {x.reason}; {note(x.target)} disagrees")
        return replace(x, probability=q, own_probability=own_p, evidence="both" if agrees else "keywords",
                       reason=f"{x.reason}; {note(x.target)}")
    top = int(np.argmax(p))
    target = clf.classes[top]
    if target == domain or p[top] < clf.threshold or target not in run_domains:
        return replace(x, probability=prob(x.target), own_probability=own_p) if x.action == "flag" else x
    scores, found = matcher.score(text)
    ti, oi = matcher._index.get(target), matcher._index.get(domain)
    kw = ", ".join(sorted(found.get(ti, []))) if ti is not None else ""
    own_kw = ", ".join(sorted(found.get(oi, []))) if oi is not None else ""
    t_score = int(scores[ti]) if ti is not None else 0
    o_score = int(scores[oi]) if oi is not None else 0
    why = (f"{note(target)}; keywords {target}: {kw or '-'}; own {domain}: {own_kw or '-'}")
    unsupported = t_score == 0 and p[top] < clf.sure
    if unsupported and mixed and clf.keyword_target:
        alt = _keyword_target(scores, matcher, domain, o_score, run_domains, idx)
        if alt is not None:  # the classifier says "not chat", the keywords say where
            ai = matcher._index[alt]
            a_kw = ", ".join(sorted(found[ai]))
            return Decision("move", alt, o_score, int(scores[ai]), a_kw, own_kw,
                            f"classifier {clf.version + ' ' if clf.version else ''}p(not {domain})="
                            f"{1 - (own_p or 0):.2f} (top {target} {p[top]:.2f} >= threshold {clf.threshold:.2f} "
                            f"has no keyword); keywords {alt}: {a_kw}; own {domain}: {own_kw or '-'}",
                            prob(alt), own_p, "both")
    if not mixed or o_score >= t_score + margin or unsupported:
        reason = ("single-domain source" if not mixed else f"{o_score} own keywords beat {t_score} by >= {margin}"
                  if not unsupported else f"no {target} keyword and p < {clf.sure:.2f}")
        return Decision("flag", target, o_score, t_score, kw, own_kw, f"looks like {target}, kept ({reason}): {why}",
                        float(p[top]), own_p, "classifier")
    return Decision("move", target, o_score, t_score, kw, own_kw, why, float(p[top]), own_p, "classifier")


def decontaminate(records: pd.DataFrame, lexicons: dict[str, list[str]], run_domains: list[str],
                  margin: int, min_score: int, mixed_sources: set[str] | None = None,
                  single_domain_min_score: int | None = None, classifier: ClassifierEvidence | None = None,
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
        classifier: Learnt evidence (``combine``); it scores the rows of mixed
            sources and the single-domain rows the keywords act on, nothing else.

    Returns:
        ``(kept, moves, dropped, flagged)``: kept rows with ``domain`` updated and
        ``origin_domain`` added; one row per move, per drop and per flag (kept,
        reported), each with both domains' keywords and the reason.
    """
    empty = pd.DataFrame(columns=LOG_COLUMNS)
    if records.empty or (not lexicons and classifier is None):
        return records.assign(origin_domain=records["domain"]), empty, empty.copy(), empty.copy()
    matcher = KeywordMatcher(lexicons or {})
    run = set(run_domains)
    texts = (records["prompt"] + "\n" + records["response"]).tolist()
    mixed = ([True] * len(records) if mixed_sources is None
             else records["source_uri"].isin(mixed_sources).tolist())
    decisions = [decide(matcher, t, d, run, margin, min_score, m, single_domain_min_score)
                 if lexicons else Decision("keep", None, 0, 0, "", "", "")
                 for t, d, m in zip(texts, records["domain"].tolist(), mixed)]
    if classifier is not None:
        ask = np.flatnonzero([m or x.action != "keep" for m, x in zip(mixed, decisions)])
        if len(ask):
            proba = classifier.score(records.iloc[ask])
            domains = records["domain"].tolist()
            for j, i in enumerate(ask):
                decisions[i] = combine(decisions[i], proba[j], classifier, matcher, texts[i], domains[i], run,
                                       margin, mixed[i])
    actions = np.array([x.action for x in decisions])
    log = pd.DataFrame([{"record_id": r, "source_uri": u, "source_row_key": k, "from_domain": d, "to_domain": x.target,
                         "own_score": x.own_score, "target_score": x.target_score, "top_keywords": x.top_keywords,
                         "own_keywords": x.own_keywords, "probability": x.probability,
                         "own_probability": x.own_probability, "evidence": x.evidence, "reason": x.reason,
                         "action": x.action}
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
