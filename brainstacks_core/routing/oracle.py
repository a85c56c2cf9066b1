"""Oracle discovery (paper 3.6): which domain combination lowers each prompt's answer loss.

What belongs here: the search over domain combinations per (prompt, answer) pair
of the held-out ``router`` split, its cache in the catalog, and the targets the
meta-router trains on. Losses come from :mod:`brainstacks_core.routing.pair_loss`.

Per pair:

1. base loss (every stack off) and each single domain's loss (only that domain's
   stacks on, weight 1);
2. greedy search: starting from the best single domain (or curriculum prefix, see
   :func:`seeds`), add the domain that lowers the loss most while it lowers it by
   more than ``greedy_min_gain`` (0.01); a pair nothing helps by that much gets the
   empty combination (base);
3. soft boost (``soft_boost``, paper: reasoning 0.5): a listed domain the search
   did not take (its gain was under the threshold) but whose addition to the greedy
   set lowers the loss at all gets that weight instead of 0, so the router does not
   learn to ignore a subtle contribution; a domain the search took keeps 1;
4. target = ``label_blend`` x oracle + (1 - ``label_blend``) x one-hot(source domain) (two-hot for a
   cross-domain row ``a+b``, :mod:`brainstacks_core.routing.cross_pairs`).

**No chat floor in the oracle.** The floor (0.20) and the gate (0.12) are
inference-time rules applied to the router's output; the oracle measures what each
combination of stacks actually does to the loss, so the router learns the outcome,
and routed evaluation then judges it with floor and gate applied. Putting the floor
into the search would make chat look necessary for every prompt by construction.

**Cache.** One catalog row (``oracle_losses``) per (pair, combination), keyed by
the pair's record id and text, the base fingerprint, the exact stack versions of
the domains IN the combination, the max length and the code version of the loss
path. A re-run computes nothing; a new or retrained domain changes the keys of the
combinations that contain it only; a key that no longer matches is never read.
A row is ~100 B: 10 domains' singles and a 3-4 step greedy search are ~40 rows a
pair, 4 KB per prompt, 40 MB for 10,000 router prompts at Gemma-3-12B scale.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from brainstacks_core.lineage.context import StoreContext
from brainstacks_core.lineage.versioning import content_hash
from brainstacks_core.routing.config import RouterConfig
from brainstacks_core.routing.cross_pairs import source_domains
from brainstacks_core.routing.pair_loss import PairLosses, answerable, combo_name, loss_code_version

log = logging.getLogger(__name__)
ProgressCb = Callable[[dict], None]


def router_pairs(ctx: StoreContext, domains: Sequence[str], catalog=None,
                 data_versions: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Every curriculum domain's held-out ``router`` split as oracle pairs.

    Args:
        ctx: the profile's store context (``lineage.context.StoreContext``).
        domains: the curriculum.
        catalog: the lineage catalog (default: the profile's).
        data_versions: dataset version per domain (default: the latest).

    Returns:
        Columns ``record_id, source_domain, prompt, response, system`` (one row per pair).

    Raises:
        ValueError: a domain was prepared without a router split (``router_fraction: 0``).
    """
    from brainstacks_core.data.pipeline import load_prepared

    frames = []
    for d in domains:
        p = load_prepared(ctx, d, catalog, (data_versions or {}).get(d))
        if p.router_path is None or not Path(p.router_path).exists():
            raise ValueError(f"{d}: dataset {p.version} has no router split: set data.router_fraction > 0 "
                             f"and prepare again")
        df = pd.read_parquet(p.router_path)
        frames.append(pd.DataFrame({"record_id": df["record_id"].astype(str), "source_domain": d,
                                    "prompt": df["prompt"].astype(str), "response": df["response"].astype(str),
                                    "system": df["system"] if "system" in df else None}))
    return pd.concat(frames, ignore_index=True)


@dataclass
class OracleResult:
    """What :func:`discover` found.

    Attributes:
        targets: one row per pair: ``record_id, source_domain, prompt, response, base_loss,
            oracle_loss, combo`` and per domain ``oracle_<d>`` (0, 1 or the soft-boost weight)
            and ``target_<d>`` (blended with the label).
        losses: every (pair, combination) loss used: ``record_id, combo, loss``.
        domains: curriculum order (the target columns' order).
        version: content hash of the cache keys and rules used (the oracle artifact's version).
        computed, reused: (pair, combination) losses computed now / read from the cache.
        forwards: model forward passes run now (0 on a re-run).
        regret: greedy vs exhaustive on the sample (see :func:`greedy_regret`).
    """

    targets: pd.DataFrame
    losses: pd.DataFrame
    domains: list[str]
    version: str
    computed: int = 0
    reused: int = 0
    forwards: int = 0
    regret: dict = field(default_factory=dict)


def seeds(domains: Sequence[str], cfg: RouterConfig) -> list[frozenset]:
    """First-step candidates: every single domain and, with ``prefix_seeds``, every curriculum prefix.

    A later domain's stacks were trained as residuals on top of every earlier
    domain's (its as-trained combination is the curriculum prefix ending at it),
    so alone they often help less than the 0.01 threshold while the prefix helps a
    lot: a search from singles only stops at "base" for such prompts. Prefixes are
    label-free (the same for every prompt) and the measured loss still decides.
    """
    out = [frozenset([d]) for d in domains]
    if cfg.prefix_seeds:
        out += [frozenset(domains[:k]) for k in range(2, len(domains) + 1)]
    return out


def _search(pl: PairLosses, n: int, domains: list[str], cfg: RouterConfig,
            progress_cb: ProgressCb | None) -> list[frozenset]:
    """Greedy combination per pair; every step evaluates all pairs' candidates in shared batches.

    Step 1 picks the best of :func:`seeds`; each later step adds the one domain that
    lowers the loss most; a step is taken only when it lowers the loss by more than
    ``greedy_min_gain``.
    """
    first = seeds(domains, cfg)
    pl.ensure([(i, frozenset()) for i in range(n)] + [(i, c) for i in range(n) for c in first])
    chosen = [frozenset() for _ in range(n)]
    active = list(range(n))
    for step in range(len(domains)):
        cands = {i: (first if step == 0 else [chosen[i] | {d} for d in domains if d not in chosen[i]])
                 for i in active}
        pl.ensure([(i, c) for i in active for c in cands[i]])
        still = []
        for i in active:
            now = pl.get(i, chosen[i])
            best = min(cands[i], key=lambda c: (pl.get(i, c), len(c), combo_name(c, domains)), default=None)
            if best is not None and now - pl.get(i, best) > cfg.greedy_min_gain:
                chosen[i] = frozenset(best)
                still.append(i)
        active = [i for i in still if len(chosen[i]) < len(domains)]
        if progress_cb is not None:
            progress_cb({"stage": "greedy", "step": step + 1, "max_steps": len(domains), "active": len(active),
                         "computed": pl.computed})
        if not active:
            break
    return chosen


def _oracle_weights(pl: PairLosses, i: int, greedy: frozenset, domains: list[str],
                    cfg: RouterConfig) -> tuple[dict[str, float], float, frozenset]:
    """Per-domain oracle weight, the oracle loss and the winning combination of pair ``i``."""
    weights = {d: (1.0 if d in greedy else 0.0) for d in domains}
    best, best_loss = greedy, pl.get(i, greedy)
    boosts = [(d, w) for d, w in cfg.soft_boost.items() if d in domains]
    pl.ensure([(i, greedy | {d}) for d, _ in boosts if d not in greedy])
    for d, w in boosts:
        if d in greedy:
            continue  # chosen by the search (gain > greedy_min_gain): a full 1
        if pl.get(i, greedy | {d}) < pl.get(i, greedy):
            weights[d] = w
            if pl.get(i, greedy | {d}) < best_loss:
                best, best_loss = greedy | {d}, pl.get(i, greedy | {d})
    return weights, best_loss, best


def greedy_regret(pl: PairLosses, sample: Sequence[int], chosen: Sequence[frozenset], domains: list[str]) -> dict:
    """Exhaustive 2^D search on ``sample`` pairs beside the greedy choice.

    Returns:
        ``{"n", "mean_regret", "max_regret", "optimal_fraction"}``: regret = greedy loss minus
        the best of all 2^D combinations (>= 0).
    """
    if not sample:
        return {"n": 0}
    combos = [frozenset(c) for r in range(len(domains) + 1) for c in itertools.combinations(domains, r)]
    pl.ensure([(i, c) for i in sample for c in combos])
    regrets = np.array([pl.get(i, chosen[i]) - min(pl.get(i, c) for c in combos) for i in sample])
    return {"n": len(sample), "combinations": len(combos), "mean_regret": float(regrets.mean()),
            "max_regret": float(regrets.max()), "optimal_fraction": float((regrets <= 1e-9).mean())}


def exhaustive_indices(n: int, k: int) -> list[int]:
    """The pairs (indices of ``n`` answerable pairs) searched exhaustively: ``k`` evenly spaced ones."""
    step = max(1, n // max(1, k)) if k else 0
    return list(range(0, n, step))[:k] if step else []


def discover(model, tokenizer, pairs: pd.DataFrame, domain_stacks: Mapping[str, Sequence[str]],
             stack_versions: Mapping[str, str], base_fingerprint: str, cfg: RouterConfig, catalog=None, *,
             domains: Sequence[str] | None = None, progress_cb: ProgressCb | None = None,
             progress: bool = True, exhaustive_ids: Sequence[str] | None = None) -> OracleResult:
    """Oracle targets for every pair (module docstring), cached in ``catalog``.

    Args:
        model, tokenizer: the base with every frozen stack of the run attached.
        pairs: :func:`router_pairs` rows.
        domain_stacks: ``domain -> stack ids`` of the run (a domain without stacks is skipped).
        stack_versions: ``stack id -> catalog version``.
        base_fingerprint: identity of the base.
        cfg: the ``router:`` section (greedy_min_gain, soft_boost, label_blend, max_length,
            oracle_batch_size, exhaustive_sample).
        catalog: where losses are cached (None: nothing is cached).
        domains: column order (default: ``domain_stacks``' order).
        exhaustive_ids: record ids of the pairs searched exhaustively (None: ``cfg.exhaustive_sample``
            evenly spaced pairs). A shard (:mod:`brainstacks_core.routing.oracle_shards`) passes the whole
            run's sample so the parent finds every loss it needs in the cache.
    """
    domains = [d for d in (domains or list(domain_stacks)) if domain_stacks.get(d)]
    keep = answerable(tokenizer, pairs, cfg.max_length)
    if not all(keep):
        log.warning("oracle: %d of %d pairs have no answer token within max_length %d: left out",
                    keep.count(False), len(keep), cfg.max_length)
    pairs = pairs[keep].reset_index(drop=True)
    pl = PairLosses(model, tokenizer, pairs, domain_stacks, stack_versions, base_fingerprint, cfg, catalog,
                    progress=progress)
    n = len(pairs)
    chosen = _search(pl, n, domains, cfg, progress_cb)
    rows = []
    for i in range(n):
        w, oracle_loss, best = _oracle_weights(pl, i, chosen[i], domains, cfg)
        src = pairs.at[i, "source_domain"]
        labels = source_domains(src)  # "a+b" (a cross-domain row): both are its label
        row = {"record_id": pairs.at[i, "record_id"], "source_domain": src, "prompt": pairs.at[i, "prompt"],
               "response": pairs.at[i, "response"], "base_loss": pl.get(i, frozenset()),
               "oracle_loss": oracle_loss, "combo": combo_name([d for d in domains if w[d] > 0], domains)}
        for d in domains:
            row[f"oracle_{d}"] = w[d]
            row[f"target_{d}"] = cfg.label_blend * w[d] + (1 - cfg.label_blend) * float(d in labels)
        rows.append(row)
    targets = pd.DataFrame(rows)
    if exhaustive_ids is None:
        sample = exhaustive_indices(n, cfg.exhaustive_sample)
    else:  # a shard: the whole run's sample (its ids), where it falls in this shard
        wanted = set(exhaustive_ids)
        sample = [i for i in range(n) if str(pairs.at[i, "record_id"]) in wanted]
    regret = greedy_regret(pl, sample, chosen, domains)
    version = content_hash("oracle", sorted(pl.keys_used), cfg.greedy_min_gain, sorted(cfg.soft_boost.items()),
                           cfg.label_blend, domains, loss_code_version())
    log.info("oracle: %d pairs, %d losses computed, %d reused, %d forwards; greedy regret %s", n, pl.computed,
             pl.reused, pl.forwards, regret)
    return OracleResult(targets=targets, losses=pl.frame(domains), domains=domains, version=version,
                        computed=pl.computed, reused=pl.reused, forwards=pl.forwards, regret=regret)


def combination_table(targets: pd.DataFrame) -> pd.DataFrame:
    """Per source domain, how often each winning combination occurs (``source_domain, combo, n, share``)."""
    counts = targets.groupby(["source_domain", "combo"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby("source_domain")["n"].transform("sum")
    return counts.sort_values(["source_domain", "n", "combo"], ascending=[True, False, True]).reset_index(drop=True)


def combination_markdown(table: pd.DataFrame, top: int = 3) -> str:
    """The paper's analysis as markdown: "medical prompts -> chat+math in 34%" (top combinations per domain)."""
    lines = ["| prompts of | winning combinations (share of the domain's router prompts) |", "|---|---|"]
    for src, g in table.groupby("source_domain", sort=False):
        parts = [f"{r.combo} {100 * r.share:.0f}%" for r in g.head(top).itertuples()]
        lines.append(f"| {src} | {', '.join(parts)} |")
    return "\n".join(lines)
