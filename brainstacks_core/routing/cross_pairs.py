"""Cross-domain router prompts built from two domains' router rows (paper 5.4, the v2 router).

What belongs here: turning the held-out ``router`` rows of two domains into
cross-domain (prompt, answer) pairs for oracle discovery, so the meta-router sees
prompts that need two stacks at once. The paper's v2 router "added 4 reasoning
cross-domain pairs (chat+reasoning, reasoning+math, reasoning+code,
reasoning+medical) from verbal-only sources", after v1 had none and conflated
reasoning with code; ``router.cross_domain_pairs`` lists them per profile.

One cross-domain row joins one row of each domain: prompt ``A.prompt + "\\n\\n" +
B.prompt``, answer ``A.response + "\\n\\n" + B.response`` (the answer-only loss then
rewards stacks that help with either part), no system prompt, source domain
``"a+b"`` (its label target is both domains; :func:`source_domains`). Rows are drawn
by seed without replacement from each side, so the set is deterministic for a given
router split; the record id hashes the two source record ids, so the oracle's loss
cache keys it like any other row.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from brainstacks_core.lineage.versioning import content_hash

log = logging.getLogger(__name__)
SEPARATOR = "+"
COLUMNS = ("record_id", "source_domain", "prompt", "response", "system")


def source_domains(source: str) -> list[str]:
    """The domains a source label names: ``"reasoning+math"`` -> ``["reasoning", "math"]``."""
    return str(source).split(SEPARATOR)


def cross_domain_rows(pairs: pd.DataFrame, domain_pairs: Sequence[Sequence[str]], rows_per_pair: int,
                      seed: int = 0, domains: Sequence[str] | None = None) -> pd.DataFrame:
    """Cross-domain rows for each ``(a, b)`` in ``domain_pairs`` (module docstring).

    Args:
        pairs: single-domain router rows (``record_id, source_domain, prompt, response``; ``system`` optional).
        domain_pairs: the domain pairs to join, in order.
        rows_per_pair: rows built per pair (fewer when a side has fewer rows).
        seed: seed of the draw.
        domains: the trained domains; a pair naming another one is skipped (logged).

    Returns:
        Rows with :data:`COLUMNS` (``system`` None), ``source_domain`` ``"a+b"``.
    """
    out = []
    for j, (a, b) in enumerate(domain_pairs):
        if domains is not None and (a not in domains or b not in domains):
            log.info("cross-domain pair %s+%s skipped: not every domain has stacks (%s)", a, b, list(domains))
            continue
        left = pairs[pairs["source_domain"] == a].reset_index(drop=True)
        right = pairs[pairs["source_domain"] == b].reset_index(drop=True)
        n = min(rows_per_pair, len(left), len(right))
        if n == 0:
            log.warning("cross-domain pair %s+%s skipped: %s has %d router rows, %s has %d", a, b, a, len(left),
                        b, len(right))
            continue
        rng = np.random.default_rng([seed, j])
        li, ri = rng.choice(len(left), n, replace=False), rng.choice(len(right), n, replace=False)
        for x, y in zip(li, ri):
            ra, rb = left.iloc[int(x)], right.iloc[int(y)]
            out.append({"record_id": content_hash("cross", ra["record_id"], rb["record_id"], length=16),
                        "source_domain": f"{a}{SEPARATOR}{b}",
                        "prompt": f"{ra['prompt']}\n\n{rb['prompt']}",
                        "response": f"{ra['response']}\n\n{rb['response']}", "system": None})
    return pd.DataFrame(out, columns=list(COLUMNS))
