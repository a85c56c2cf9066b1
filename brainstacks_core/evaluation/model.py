"""The harness's model class over a profile's model: ``base``, ``ungated`` or ``routed`` stacks.

:class:`BrainstacksLM` is lm-eval's own ``HFLM`` given a model instance, so
tokenisation, batching, truncation, log-likelihood and greedy generation are the
harness's code. It adds two things around HFLM's ``loglikelihood`` and
``generate_until``:

* **Stack weights per request.** ``base``: every stack off; ``ungated``: every
  stack at weight 1; ``routed``: the router reads each request's context and its
  domain weights become stack weights. Requests routed differently share HFLM's
  batches through per-row stack weights (:mod:`~brainstacks_core.evaluation.row_plan`);
  where a row's weights would be ambiguous they are grouped by routing decision and
  each group runs as its own HFLM call.
* **A score cache.** Each request is keyed by the *effective* model (base
  fingerprint + the versions and weights of the stacks that are on for it), the
  request kind and its arguments. Keys already in the catalog's ``eval_scores``
  table are returned without a forward pass; only unseen requests are computed.
  So a re-run scores nothing, and a changed stack re-scores exactly the requests
  whose effective model contains it. With ``flush_forwards`` (K) the misses run in
  chunks of K x batch size requests, each written as soon as it is scored: a killed
  worker loses at most K forwards (the evaluation fan-out's shards rely on it).
* **A routing cache.** In ``routed`` mode each distinct context's domain weights
  are stored under (router version, domain -> stacks map, context) in the same
  table (kind ``route``), so a re-run does not run the router's feature forwards
  either (with ``flush_forwards`` K, written every K x batch size contexts).
* **Retention.** Each stored row names its identity (the effective model, or the
  router version for a routing decision), and ``eval_models`` records what each
  identity is made of (base fingerprint, stack versions on; the router version), so
  ``brainstacks catalog prune`` (:mod:`~brainstacks_core.evaluation.retention`) can drop
  the rows of models no current run uses.

Memory: the cache lives in DuckDB, not in RAM beyond one harness call's results
(a few floats per request); nothing grows with tokens seen. On disk a score row
is ~100 bytes (32-char key, kind, ``[loglikelihood, greedy]`` JSON; a generation
its text), a routing row ~350 bytes at 10 stacks (``{stack_id: weight}`` JSON),
independent of model shape: Gemma-3-12B rows are the size of tiny-model rows. Grouping adds no
buffers: at Gemma-3-12B shapes (hidden 3840, 48 layers, 262k vocab, 10 stacks)
one forward of a batch of 8 x 2,048 tokens holds HFLM's usual logits (8 x 2,048
x 262k fp32 = 17 GB, which is why HFLM slices them to the continuation) and
the stacks' batched delta buffers of ``StackedMoELoRALayer``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Iterator, Mapping, Sequence

import pandas as pd
import torch
from lm_eval.models.huggingface import HFLM

from brainstacks_core.evaluation.routing import Router, stack_weights
from brainstacks_core.evaluation.row_plan import RowPlan, plan_generation, plan_loglikelihood
from brainstacks_core.lineage.versioning import content_hash
from brainstacks_core.stacks.inject import only_stacks, row_weights, set_stack_weights, stack_ids

log = logging.getLogger(__name__)

MODES = ("base", "ungated", "routed")


@contextlib.contextmanager
def weighted(model: torch.nn.Module, weights: Mapping[str, float]) -> Iterator[None]:
    """Every frozen stack at ``weights.get(id, 0)`` inside the block; previous weights restored after."""
    with only_stacks(model, None):
        set_stack_weights(model, {sid: float(weights.get(sid, 0.0)) for sid in stack_ids(model)})
        yield


class BrainstacksLM(HFLM):
    """lm-eval ``HFLM`` over a model with frozen stacks, in one of three modes.

    Args:
        model: a causal LM with injected stack layers and its frozen stacks attached.
        tokenizer: its tokenizer.
        mode: ``base`` | ``ungated`` | ``routed``.
        base_fingerprint: identity of the base weights.
        stack_versions: ``{stack_id: catalog version}`` of every attached stack.
        router: required for ``routed``; see :class:`~brainstacks_core.evaluation.routing.Router`.
        domain_stacks: ``{domain: [stack_id, ...]}`` for routed mode.
        catalog: where scores are cached (``None`` = no cache).
        batch_size: requests per forward pass.
        max_length: context length (``None`` = the model's).
        device: torch device of ``model``.
        request_bars: show HFLM's own per-call request bars (off under an outer progress bar).
        per_row_batches: routed requests with different weights share HFLM's batches through
            per-row stack weights (:mod:`~brainstacks_core.evaluation.row_plan`); False: one HFLM
            call per distinct weight vector (the reference the parity test compares with).
        flush_forwards: computed scores are written to the catalog after at most this many
            forwards (K; ``eval.flush_forwards``): each call's cache misses run as HFLM calls of at
            most K x ``batch_size`` requests, each stored as soon as it returns, so a worker killed
            mid-call loses at most K forwards (routing decisions likewise, every K x ``batch_size``
            contexts). ``None``: one write at the end of each call.

    Attributes:
        computed: requests actually run through the model (cache misses) since construction.
        reused: requests answered from the cache.
        forwards: batches run through the model (HFLM ``_model_call`` / ``_model_generate`` calls).
        writes: score writes to the catalog (one per flush).
        routes_computed: distinct contexts the router was run on (routed mode; cache misses).
        routes_reused: distinct contexts whose routing came from the cache.
    """

    def __init__(self, model, tokenizer, *, mode: str, base_fingerprint: str,
                 stack_versions: Mapping[str, str] | None = None, router: Router | None = None,
                 domain_stacks: Mapping[str, Sequence[str]] | None = None, catalog=None, batch_size: int = 8,
                 max_length: int | None = None, device: str | None = None, request_bars: bool = True,
                 per_row_batches: bool = True, flush_forwards: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "routed" and (router is None or domain_stacks is None):
            raise ValueError("routed mode needs a router and the domain -> stack ids map")
        device = device or str(next(model.parameters()).device)
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                         device=device)
        self.mode, self.router, self.catalog = mode, router, catalog
        self.base_fingerprint = base_fingerprint
        self.stack_versions = dict(stack_versions or {})
        self.domain_stacks = {d: list(s) for d, s in (domain_stacks or {}).items()}
        missing = [s for s in stack_ids(model) if s not in self.stack_versions]
        if missing:
            raise ValueError(f"stack_versions lacks attached stacks {missing}")
        self.request_bars = request_bars
        self.per_row_batches = per_row_batches
        self._row_plan: RowPlan | None = None
        if flush_forwards is not None and flush_forwards < 1:
            raise ValueError(f"flush_forwards must be >= 1 or None, got {flush_forwards}")
        self.flush_forwards = flush_forwards
        self.computed = self.reused = self.routes_computed = self.routes_reused = 0
        self.forwards = self.writes = 0

    # ------------------------------------------------------------ identity
    def weights_for(self, contexts: Sequence[str]) -> list[dict[str, float]]:
        """``{stack_id: weight}`` for each request context (non-zero entries only)."""
        if self.mode == "base":
            return [{} for _ in contexts]
        if self.mode == "ungated":
            return [{sid: 1.0 for sid in self.stack_versions} for _ in contexts]
        unique = list(dict.fromkeys(contexts))
        stacks = sorted(self.domain_stacks.items())
        keys = {c: content_hash("route", self.router.version, stacks, c, length=32) for c in unique}
        stored = self.catalog.eval_scores(list(keys.values())) if self.catalog is not None else {}
        routed = {c: json.loads(stored[keys[c]]) for c in unique if keys[c] in stored}
        todo = [c for c in unique if c not in routed]
        size = max(1, self.flush_forwards * int(self.batch_size) if self.flush_forwards else len(todo))
        for start in range(0, len(todo), size):  # like scores: written every K x batch_size contexts
            chunk = todo[start:start + size]
            routed.update(zip(chunk, stack_weights(self.router, self.domain_stacks, chunk)))
            if self.catalog is not None:
                self.catalog.record_eval_scores(pd.DataFrame(
                    {"key": [keys[c] for c in chunk], "kind": "route",
                     "value": [json.dumps(routed[c]) for c in chunk], "identity": self.router.version}),
                    models={self.router.version: [self.router.version]})
        self.routes_computed += len(todo)
        self.routes_reused += len(unique) - len(todo)
        return [{s: w for s, w in routed[c].items() if w != 0.0} for c in contexts]

    def identity(self, weights: Mapping[str, float]) -> str:
        """The effective model: base + (version, weight) of each stack that is on; the scoring settings."""
        on = sorted((self.stack_versions[s], w) for s, w in weights.items() if w != 0.0)
        return content_hash(self.base_fingerprint, on, self.max_length, self.add_bos_token, length=20)

    def depends(self, weights: Mapping[str, float]) -> list[str]:
        """The artifact versions the effective model of ``weights`` is made of: the base and the stacks on."""
        return [self.base_fingerprint, *sorted(self.stack_versions[s] for s, w in weights.items() if w != 0.0)]

    def mode_identity(self) -> dict:
        """What a result of this mode depends on (for the per-item table and lineage)."""
        stacks = {} if self.mode == "base" else dict(sorted(self.stack_versions.items()))
        router = getattr(self.router, "version", None) if self.mode == "routed" else None
        return {"mode": self.mode, "base": self.base_fingerprint, "stacks": stacks, "router": router,
                "id": content_hash(self.mode, self.base_fingerprint, stacks, router, self.max_length, length=16)}

    # ------------------------------------------------------------ cached, grouped requests
    def _run(self, kind: str, requests: list, key_args, compute, encode, decode, disable_tqdm: bool) -> list:
        contexts = [r.args[0] for r in requests]
        weights = self.weights_for(contexts)
        idents = [self.identity(w) for w in weights]
        keys = [content_hash(kind, i, key_args(r), length=32) for r, i in zip(requests, idents)]
        stored = self.catalog.eval_scores(keys) if self.catalog is not None else {}
        out: list = [decode(stored[k]) if k in stored else None for k in keys]
        todo = [i for i, k in enumerate(keys) if k not in stored]
        # at most K forwards between two writes: the misses run in chunks of K x batch_size requests
        size = max(1, self.flush_forwards * int(self.batch_size) if self.flush_forwards else len(todo))
        pending: list[int] = []
        n_groups, shared = 0, False
        for start in range(0, len(todo), size):
            pieces, groups = self._pieces(kind, requests, todo[start:start + size], weights)
            n_groups, shared = max(n_groups, groups), shared or pieces[0][1] is not None
            for piece, plan in pieces:
                for i, res in zip(piece, self._compute(requests, piece, plan, weights, compute, disable_tqdm)):
                    out[i] = res
                pending += piece
                if self.flush_forwards:
                    self._store(kind, pending, keys, idents, weights, out, encode)
                    pending = []
        self._store(kind, pending, keys, idents, weights, out, encode)
        self.computed += len(todo)
        self.reused += len(requests) - len(todo)
        log.info("%s %s: %d requests, %d computed, %d from cache, %d routing groups%s", self.mode, kind,
                 len(requests), len(todo), len(requests) - len(todo), n_groups,
                 " in shared batches (per-row weights)" if shared else "")
        return out

    def _pieces(self, kind: str, requests: list, chunk: list[int], weights: list) -> tuple[list, int]:
        """How one chunk of cache misses runs: ``([(indices, row plan or None), ...], routing groups)``.

        One HFLM call with per-row weights when the chunk's requests are routed differently and a
        row plan exists; else one call per distinct weight vector (each no longer than the chunk).
        """
        groups: dict[str, list[int]] = {}
        for i in chunk:
            groups.setdefault(json.dumps(sorted(weights[i].items())), []).append(i)
        if len(groups) > 1 and self.per_row_batches:
            planner = plan_generation if kind == "generate_until" else plan_loglikelihood
            plan = planner(self, [requests[i] for i in chunk], [weights[i] for i in chunk], stack_ids(self.model))
            if plan is not None:
                return [(chunk, plan)], len(groups)
        return [(g, None) for g in groups.values()], len(groups)

    def _compute(self, requests: list, piece: list[int], plan: RowPlan | None, weights: list, compute,
                 disable_tqdm: bool) -> list:
        """HFLM's results for ``requests[piece]``: under the row plan, or all at ``weights[piece[0]]``."""
        reqs, quiet = [requests[i] for i in piece], disable_tqdm or not self.request_bars
        if plan is None:
            with weighted(self.model, weights[piece[0]]):
                return compute(reqs, quiet)
        self._row_plan = plan  # one HFLM call: every batch carries its rows' own weights
        try:
            with weighted(self.model, {}):
                return compute(reqs, quiet)
        finally:
            self._row_plan = None

    def _store(self, kind: str, idx: list[int], keys: list[str], idents: list[str], weights: list, out: list,
               encode) -> None:
        """Write the computed results ``out[idx]`` to the score cache (present keys are kept)."""
        if self.catalog is None or not idx:
            return
        rows = pd.DataFrame({"key": [keys[i] for i in idx], "kind": kind, "value": [encode(out[i]) for i in idx],
                             "identity": [idents[i] for i in idx]})
        self.catalog.record_eval_scores(rows.drop_duplicates("key"),
                                        models={idents[i]: self.depends(weights[i]) for i in idx})
        self.writes += 1

    def _model_call(self, inps, attn_mask=None, labels=None):
        """HFLM's forward; under a row plan each row runs with its own request's stack weights."""
        self.forwards += 1
        if self._row_plan is None:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with row_weights(self.model, self._row_plan.stack_ids, self._row_plan.weights(inps)):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        """HFLM's greedy generation; under a row plan each row keeps its request's weights for every step."""
        self.forwards += 1
        if self._row_plan is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        w = self._row_plan.weights(context, generation_kwargs.get("attention_mask"))
        with row_weights(self.model, self._row_plan.stack_ids, w):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """HFLM's log-likelihoods, with per-request stack weights and the score cache."""
        return self._run("loglikelihood", requests, lambda r: list(r.args),
                         lambda reqs, dt: HFLM.loglikelihood(self, reqs, disable_tqdm=dt),
                         lambda res: json.dumps([float(res[0]), bool(res[1])]),
                         lambda text: tuple(json.loads(text)), disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """HFLM's greedy generation, with per-request stack weights and the score cache."""
        return self._run("generate_until", requests,
                         lambda r: [r.args[0], json.dumps(r.args[1], sort_keys=True, default=str),
                                    self.max_gen_toks],
                         lambda reqs, dt: HFLM.generate_until(self, reqs, disable_tqdm=dt),
                         json.dumps, json.loads, disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style tasks: base and ungated only (no per-request context to route on)."""
        if self.mode == "routed":
            raise NotImplementedError("loglikelihood_rolling has no context to route on; use base or ungated")
        with weighted(self.model, self.weights_for([""])[0]):
            return HFLM.loglikelihood_rolling(self, requests, disable_tqdm=disable_tqdm)

    def continuation_tokens(self, context: str, continuation: str) -> int:
        """Tokens of ``continuation`` as HFLM scores it after ``context`` (for the mean-per-token score)."""
        if context == "":
            return len(self.tok_encode(continuation, add_special_tokens=False))
        return len(self._encode_pair(context, continuation)[1])
