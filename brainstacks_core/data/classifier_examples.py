"""What the decontamination classifier reads of a row, and the examples it is trained on.

``row_texts`` cuts a row to the classifier's text; ``fold_of`` gives a record its
cross-fitting fold and ``fragments`` the short views of a labelled row that are
trained as its domain. Everything is chosen by hash of the record id, so a fit is
the same on every run. Used by ``domain_classifier``; nothing here knows the model.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd


def row_texts(prompts: pd.Series, responses: pd.Series, max_chars: int) -> list[str]:
    """What the classifier reads of each row: the prompt, then the response, each cut at ``max_chars``."""
    return [f"{p[:max_chars]}\n{r[:max_chars]}" for p, r in zip(prompts.tolist(), responses.tolist())]


def unit(seed: int, salt: str, rid: str) -> float:
    """A uniform number in ``[0, 1)`` from the hash of ``seed``, ``salt`` and a record id."""
    return int(hashlib.sha256(f"{seed}:{salt}:{rid}".encode()).hexdigest()[:12], 16) / float(16 ** 12)


_SEGMENT = re.compile(r"(?<=[.?!:;])\s+|\n+")


def fragments(texts: list[str], record_ids: list[str], per_row: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Short views of labelled rows, each labelled as its row: one to three consecutive sentences or lines.

    A row of a domain is long and in its source's format (a GSM8K word problem with
    its worked answer); the rows that stray into a mixed source are often one short
    request. Training on fragments too teaches the domain's vocabulary apart from
    its source's length and layout. Deterministic: windows are chosen by hash.

    Returns:
        ``[M]`` index (into ``texts``) of each fragment's row, and the ``M`` fragments
        (rows with a single segment give none).
    """
    rows, out = [], []
    for i, (t, rid) in enumerate(zip(texts, record_ids)):
        segs = [x for x in _SEGMENT.split(t) if len(x.strip()) > 1]
        if len(segs) < 2:
            continue
        for j in range(per_row):
            width = 1 + int(unit(seed, f"fragw{j}", rid) * 3)
            start = int(unit(seed, f"frag{j}", rid) * max(len(segs) - width + 1, 1))
            rows.append(i)
            out.append(" ".join(segs[start:start + width]))
    return np.array(rows, dtype=np.int64), out


def fold_of(record_ids: list[str], folds: int, seed: int) -> np.ndarray:
    """The cross-fitting fold of each record (by hash): ``[N]`` ints in ``[0, folds)``."""
    return np.array([min(int(unit(seed, "fold", r) * folds), folds - 1) for r in record_ids], dtype=np.int64)
