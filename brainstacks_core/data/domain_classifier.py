"""A domain classifier learnt from the labelled sources, for decontamination.

Every row of a single-domain source (``mixed: false``) is a labelled example of its
domain: CodeAlpaca rows are code, GSM8K rows math. A domain that only has mixed
sources (chat) is labelled by those rows themselves (noisy labels: a few of them are
foreign, which is what decontamination is after), with **cross-fitting**: the mixed
rows are split by hash into ``folds`` and each fold is scored by a model that never
saw it, so a row's own label cannot vouch for it.

The model is scikit-learn's TF-IDF (word 1..n-grams, digits folded to ``0``,
punctuation kept as tokens: ``{``, ``;``, ``<<``, ``$``) and a multinomial logistic
regression over the domains. It is stored without pickle: ``model.safetensors``
holds the idf vector ``[F]``, the coefficients ``[K, C, F]`` (K folds, C domains,
F features) and the intercepts ``[K, C]`` (float32); ``model.json`` holds the
vocabulary (terms in feature order), classes, settings, calibration and the
safetensors file's sha256. Probabilities are computed here from those arrays
(``softmax(tfidf(x) @ W.T + b)``), so a fitted and a reloaded model give
identical numbers.

Each training row also gives a short fragment of itself, trained as its domain
(``fragments``, in ``classifier_examples`` with the other helpers that turn rows into
examples). The decision threshold is calibrated on a held-out share of the labelled rows
(``calibration_fraction``, by hash, never trained on): the lowest probability at
which at most ``max_false_move_rate`` of held-out single-domain rows would be
assigned to another domain (``calibrate``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from brainstacks_core.data.classifier_examples import fold_of, fragments, row_texts, unit
from brainstacks_core.data.config import ClassifierConfig
from brainstacks_core.files import atomic_write, atomic_write_json, canonicalize_safetensors, sha256_file

log = logging.getLogger(__name__)

FORMAT = "brainstacks-domain-classifier/2"
_TOKEN = r"[a-z_][a-z0-9_]*|0+|[^\sa-z0-9_]{1,3}"
_DIGIT = re.compile(r"\d")


class ClassifierFileError(ValueError):
    """A stored classifier is missing, corrupt or of another format (names the file)."""


def _preprocess(text: str) -> str:
    return _DIGIT.sub("0", text.lower())


def _vectorizer(settings: ClassifierConfig, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(preprocessor=_preprocess, lowercase=False, token_pattern=_TOKEN,
                           ngram_range=(1, settings.ngram_max), max_features=settings.max_features,
                           min_df=1 if vocabulary is not None else settings.min_df, sublinear_tf=True,
                           vocabulary=vocabulary, dtype=np.float32)


def _char_vectorizer(settings: ClassifierConfig, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(preprocessor=_preprocess, lowercase=False, analyzer="char_wb",
                           ngram_range=tuple(settings.char_ngrams), max_features=settings.char_max_features,
                           min_df=1 if vocabulary is not None else settings.min_df, sublinear_tf=True,
                           vocabulary=vocabulary, dtype=np.float32)


@dataclass
class DomainClassifier:
    """A fitted (or reloaded) classifier.

    Attributes:
        classes: Domains, in the order of the probability columns.
        vocabulary: Word term -> feature index (``[0, F_w)``).
        idf: ``[F]`` inverse document frequencies (``F = F_w + F_c``: words, then character n-grams).
        coef: ``[K, C, F]`` logistic-regression weights, one set per fold.
        intercept: ``[K, C]`` biases.
        settings: The settings it was fitted with.
        info: Training and calibration figures (rows per class, threshold, held-out metrics).
        char_vocabulary: Character n-gram -> index within its block (``[0, F_c)``; empty: words only).
    """

    classes: list[str]
    vocabulary: dict[str, int]
    idf: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    settings: ClassifierConfig
    info: dict = field(default_factory=dict)
    char_vocabulary: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_words = len(self.vocabulary)
        self._vec = _vectorizer(self.settings, self.vocabulary)
        self._vec.idf_ = self.idf[:n_words].astype(np.float64)
        self._char = None
        if self.char_vocabulary:
            self._char = _char_vectorizer(self.settings, self.char_vocabulary)
            self._char.idf_ = self.idf[n_words:].astype(np.float64)

    @property
    def threshold(self) -> float:
        """The calibrated probability a foreign domain needs (or the configured one)."""
        return float(self.info["threshold"])

    def transform(self, texts: list[str]):
        """TF-IDF rows: a sparse ``[N, F]`` matrix (each block, words and characters, l2-normalised)."""
        x = self._vec.transform(texts)
        return x if self._char is None else sp.hstack([x, self._char.transform(texts)], format="csr")

    def predict_proba(self, texts: list[str], folds: np.ndarray | None = None) -> np.ndarray:
        """Domain probabilities ``[N, C]`` (columns: ``classes``).

        Args:
            texts: Row texts (``row_texts``).
            folds: ``[N]`` the fold model that scores each row (cross-fitting); default fold 0.
        """
        x = self.transform(texts)
        folds = np.zeros(len(texts), dtype=np.int64) if folds is None else np.asarray(folds)
        logits = np.empty((len(texts), len(self.classes)), dtype=np.float64)
        for k in range(self.coef.shape[0]):
            rows = np.flatnonzero(folds == k)
            if len(rows):
                logits[rows] = x[rows] @ self.coef[k].T.astype(np.float64) + self.intercept[k]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    # ---- storage: safetensors + JSON, never pickle ----
    def save(self, folder: Path) -> Path:
        """Write ``model.safetensors`` and ``model.json`` (vocabulary, classes, settings, sha256) to ``folder``."""
        folder = Path(folder)
        tensors = {"idf": self.idf.astype(np.float32), "coef": self.coef.astype(np.float32),
                   "intercept": self.intercept.astype(np.float32)}
        with atomic_write(folder / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
            canonicalize_safetensors(tmp)  # the same bytes in every process

        def ordered(vocabulary: dict[str, int]) -> list[str]:
            terms = [""] * len(vocabulary)
            for t, i in vocabulary.items():
                terms[i] = t
            return terms

        atomic_write_json(folder / "model.json", {
            "format": FORMAT, "classes": self.classes, "terms": ordered(self.vocabulary),
            "char_terms": ordered(self.char_vocabulary),
            "settings": self.settings.model_dump(mode="json"), "info": self.info,
            "safetensors_sha256": sha256_file(folder / "model.safetensors")})
        return folder / "model.safetensors"

    @classmethod
    def load(cls, folder: Path) -> "DomainClassifier":
        """Read a stored classifier; the tensors' sha256 must match ``model.json``.

        Raises:
            ClassifierFileError: A file is missing, its checksum differs, or shapes disagree.
        """
        folder = Path(folder)
        meta_path, st_path = folder / "model.json", folder / "model.safetensors"
        if not meta_path.is_file() or not st_path.is_file():
            raise ClassifierFileError(f"{folder}: model.json or model.safetensors missing")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ClassifierFileError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT}")
        if sha256_file(st_path) != meta["safetensors_sha256"]:
            raise ClassifierFileError(f"{st_path}: sha256 differs from {meta_path} (file changed or corrupt)")
        t = load_file(str(st_path))
        vocab = {term: i for i, term in enumerate(meta["terms"])}
        chars = {term: i for i, term in enumerate(meta["char_terms"])}
        k, c, f = t["coef"].shape
        if f != len(vocab) + len(chars) or t["idf"].shape != (f,) or c != len(meta["classes"]) or t["intercept"].shape != (k, c):
            raise ClassifierFileError(f"{st_path}: shapes {t['coef'].shape} / {t['idf'].shape} do not match "
                                      f"{len(vocab)} + {len(chars)} terms and {len(meta['classes'])} classes in {meta_path}")
        return cls(classes=meta["classes"], vocabulary=vocab, idf=t["idf"], coef=t["coef"],
                   intercept=t["intercept"], settings=ClassifierConfig(**meta["settings"]), info=meta["info"],
                   char_vocabulary=chars)


def labelled_rows(records: pd.DataFrame, mixed_sources: set[str], domains: list[str]) -> pd.DataFrame:
    """The rows the classifier learns from, with ``label`` and ``noisy`` (from a mixed source).

    A domain with a single-domain source learns from those rows only; a domain whose
    sources are all mixed learns from its mixed rows (noisy labels, cross-fitted).
    """
    is_mixed = records["source_uri"].isin(mixed_sources)
    parts = []
    for d in domains:
        mine = records[records["domain"] == d]
        clean = mine[~is_mixed.loc[mine.index]]
        parts.append(clean.assign(noisy=False) if len(clean) else mine.assign(noisy=True))
    out = pd.concat(parts, ignore_index=True) if parts else records.iloc[0:0].assign(noisy=False)
    return out.assign(label=out["domain"])


def calibrate(proba: np.ndarray, labels: np.ndarray, noisy: np.ndarray, classes: list[str],
              max_false_move_rate: float) -> dict:
    """The lowest threshold at which held-out clean rows rarely go to another domain.

    A held-out row of a single-domain source *would be moved* at threshold ``t``
    when its most probable domain is another one with probability >= ``t``; it
    *would be recovered* (recall, as if it had turned up in another domain's mixed
    source) when its own domain is the most probable with probability >= ``t``.

    Args:
        proba: ``[N, C]`` held-out probabilities.
        labels: ``[N]`` their domains.
        noisy: ``[N]`` True for rows of mixed sources (reported, not used to choose ``t``).
        classes: Column names of ``proba``.
        max_false_move_rate: Largest share of held-out clean rows the threshold may move.

    Returns:
        ``threshold`` plus the held-out figures at it: ``false_move_rate``, ``recall``,
        ``noisy_moved_rate`` (mixed rows assigned elsewhere: true foreign rows and errors), counts.
    """
    top = proba.argmax(axis=1)
    pmax = proba.max(axis=1)
    own = np.array([classes.index(x) for x in labels])
    clean = ~noisy
    wrong = clean & (top != own)
    grid = np.round(np.arange(0.30, 0.991, 0.01), 2)
    chosen = grid[-1]
    for t in grid:
        if clean.sum() == 0 or (wrong & (pmax >= t)).sum() <= max_false_move_rate * clean.sum():
            chosen = t
            break

    def rate(mask: np.ndarray, of: np.ndarray) -> float:
        return float(mask.sum() / of.sum()) if of.sum() else 0.0

    return {"threshold": float(chosen), "held_out_clean": int(clean.sum()), "held_out_noisy": int(noisy.sum()),
            "false_move_rate": rate(wrong & (pmax >= chosen), clean),
            "recall": rate(clean & (top == own) & (pmax >= chosen), clean),
            "noisy_moved_rate": rate(noisy & (top != own) & (pmax >= chosen), noisy),
            "accuracy": rate(clean & (top == own), clean)}


def fit(labelled: pd.DataFrame, settings: ClassifierConfig, seed: int) -> DomainClassifier:
    """Fit the vocabulary once and one logistic regression per fold; calibrate on the held-out share.

    Args:
        labelled: ``labelled_rows`` output (``record_id``, ``prompt``, ``response``, ``label``, ``noisy``).
        settings: The ``data.classifier`` section.
        seed: Seed of the hash splits (held-out share, folds, per-domain cap).

    Raises:
        ValueError: Fewer than two domains have labelled rows.
    """
    classes = sorted(labelled["label"].unique())
    if len(classes) < 2:
        raise ValueError(f"the decontamination classifier needs labelled rows of >= 2 domains, got {classes}")
    rids = labelled["record_id"].tolist()
    u = np.array([unit(seed, "calib", r) for r in rids])
    held = u < settings.calibration_fraction
    order = np.argsort([unit(seed, "cap", r) for r in rids], kind="stable")
    train = np.zeros(len(labelled), dtype=bool)
    cal = np.zeros(len(labelled), dtype=bool)
    per_class_train: dict[str, int] = {}
    per_class_cal: dict[str, int] = {}
    labels = labelled["label"].to_numpy()
    for i in order:  # a cap per domain, in hash order (balanced classes, bounded cost)
        c = labels[i]
        if held[i] and per_class_cal.get(c, 0) < settings.calibration_rows_per_domain:
            cal[i] = True
            per_class_cal[c] = per_class_cal.get(c, 0) + 1
        elif not held[i] and per_class_train.get(c, 0) < settings.train_rows_per_domain:
            train[i] = True
            per_class_train[c] = per_class_train.get(c, 0) + 1
    texts = np.array(row_texts(labelled["prompt"], labelled["response"], settings.max_chars), dtype=object)
    noisy = labelled["noisy"].to_numpy(bool)
    folds = fold_of(rids, settings.folds, seed)
    y = np.array([classes.index(c) for c in labels])
    # training examples: each training row, then its fragments (same label, fold and noisiness)
    rows = np.flatnonzero(train)
    frag_rows, frag_texts = fragments(texts[rows].tolist(), [rids[i] for i in rows], settings.fragments, seed)
    src = np.concatenate([rows, rows[frag_rows]]).astype(np.int64)  # [T] the labelled row of each example
    ex_texts = texts[rows].tolist() + frag_texts
    vec = _vectorizer(settings)
    x_train = vec.fit_transform(ex_texts)
    idf, chars = vec.idf_, {}
    if settings.char_ngrams:
        cvec = _char_vectorizer(settings)
        x_train = sp.hstack([x_train, cvec.fit_transform(ex_texts)], format="csr")
        idf, chars = np.concatenate([vec.idf_, cvec.idf_]), {t: int(i) for t, i in cvec.vocabulary_.items()}
    coef = np.zeros((settings.folds, len(classes), x_train.shape[1]), dtype=np.float32)
    intercept = np.zeros((settings.folds, len(classes)), dtype=np.float32)
    ex_noisy, ex_fold, ex_y = noisy[src], folds[src], y[src]
    use = np.ones(len(src), dtype=bool)
    n_cleaned = 0
    for rnd in range(1 + settings.clean_rounds):
        if rnd:  # noisy rows their out-of-fold model assigns to another domain leave the training set
            first = np.flatnonzero(ex_noisy[:len(rows)])  # judged on the whole row, fragments follow it
            logits = np.stack([x_train[first] @ coef[k].T + intercept[k] for k in range(settings.folds)])[
                ex_fold[first], np.arange(len(first))]
            foreign = set(src[first[logits.argmax(axis=1) != ex_y[first]]].tolist())
            use = ~np.isin(src, list(foreign))
            n_cleaned = len(foreign)
        for k in range(settings.folds):
            sel = use & ~(ex_noisy & (ex_fold == k))  # a fold's noisy rows never train its model
            lr = LogisticRegression(C=settings.C, max_iter=settings.max_iter, class_weight="balanced")
            with threadpool_limits(1):  # BLAS threads on a sparse lbfgs fit: 7x slower on 2 busy cores
                lr.fit(x_train[sel], ex_y[sel])
            coef[k], intercept[k] = lr.coef_.astype(np.float32), lr.intercept_.astype(np.float32)
    vocab = {t: int(i) for t, i in vec.vocabulary_.items()}
    model = DomainClassifier(classes=classes, vocabulary=vocab, idf=idf.astype(np.float32), coef=coef,
                             intercept=intercept, settings=settings, char_vocabulary=chars,
                             info={"train_rows": {c: int(n) for c, n in sorted(per_class_train.items())},
                                   "calibration_rows": {c: int(n) for c, n in sorted(per_class_cal.items())},
                                   "noisy_classes": sorted(set(labels[noisy])), "features": len(vocab) + len(chars),
                                   "noisy_rows_left_out": n_cleaned,
                                   "fragments": len(frag_texts)})
    cal_idx = np.flatnonzero(cal)
    if len(cal_idx):
        p = model.predict_proba(texts[cal_idx].tolist(), folds[cal_idx])
        figures = calibrate(p, labels[cal_idx], noisy[cal_idx], classes, settings.max_false_move_rate)
    else:
        figures = {"threshold": 0.9}
    if settings.threshold is not None:
        figures = {**figures, "calibrated_threshold": figures["threshold"], "threshold": settings.threshold}
    model.info.update(figures)
    log.info("decontamination classifier: %d features, classes %s, threshold %.2f, held-out %s", len(vocab),
             classes, model.threshold, {k: v for k, v in figures.items() if k != "threshold"})
    return model
