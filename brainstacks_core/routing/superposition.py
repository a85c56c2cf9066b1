"""Routed (superposition) inference: the router picks per-prompt stack weights, the store loads only those stacks.

What belongs here: turning router outputs into a :class:`RoutePlan` (chat floor,
gate, per-row stack weights), running forwards and greedy / streamed generation
under it (:class:`RoutedModel`), and :func:`load_routed_run`, the trained run as
``brainstacks generate`` serves it. Stack files are handled by
:class:`~brainstacks_core.routing.stack_store.StackStore`.

For ``B`` prompts and ``D`` domains:

1. ``router.domain_weights`` -> ``[B, D]`` (base-only features), then the profile's
   ``router.chat_floor`` (0.20) and ``router.gate_threshold`` (0.12) are applied
   (:func:`~brainstacks_core.routing.router.floor_and_gate`; idempotent, so a
   :class:`~brainstacks_core.routing.router.TrainedRouter` that applied them already
   gives the same weights);
2. a domain at 0 in every row is gated: its stacks are **never loaded**; every stack
   of a domain with some non-zero row gets that domain's weight per row
   (``[B, S]`` over the ``S`` stacks that take part);
3. :meth:`StackStore.ensure` attaches the missing ones (stacks attached by earlier
   calls but not used now stay in the LRU at weight 0 in every row: skipped, never
   read), then the forward / generation runs under
   :func:`~brainstacks_core.stacks.inject.row_weights`, so prompts routed
   differently share one batch.

Memory per call: the ``[B, S]`` fp32 weights (16 x 10 x 4 = 640 B) and generation's
KV cache (Gemma-3-12B, bf16: 384 KiB per token and prompt).

Threads: the stack weights live in the model's layers, so a call sets them, runs its
forwards and restores them while holding the model's lock (:func:`model_lock`, one
per model, shared by every :class:`RoutedModel` over it). Concurrent ``plan`` /
``routed`` / ``generate`` calls from several threads therefore give the answers serial
calls give; they run one after the other on the model (a server wanting parallel
forwards holds one model per worker).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from brainstacks_core.routing.config import RouterConfig, RoutingSetup
from brainstacks_core.routing.router import floor_and_gate
from brainstacks_core.routing.stack_store import StackStore
from brainstacks_core.stacks.inject import row_weights
from brainstacks_core.training.sft_data import to_messages

log = logging.getLogger(__name__)
_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one re-entrant lock of ``model``: held while its stack weights are set and its forwards run."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@dataclass(frozen=True)
class RoutePlan:
    """Routing of one batch of prompts.

    Attributes:
        prompts: the ``B`` prompts.
        domains: the router's ``D`` domains (column order).
        weights: ``[B, D]`` domain weights after the chat floor and the gate.
        stack_ids: the ``S`` stacks that take part (a domain non-zero in some row), curriculum order.
        stack_weights: ``[B, S]``: each stack gets its domain's weight in each row.
        gated: domains at 0 in every row (their stacks are not loaded).
    """

    prompts: list[str]
    domains: list[str]
    weights: torch.Tensor
    stack_ids: list[str]
    stack_weights: torch.Tensor
    gated: list[str]


def plan_routes(prompts: Sequence[str], weights: torch.Tensor, domains: Sequence[str],
                domain_stacks: Mapping[str, Sequence[str]], cfg: RouterConfig) -> RoutePlan:
    """Floor, gate and per-row stack weights for router outputs ``weights`` ``[B, D]``."""
    w = floor_and_gate(torch.as_tensor(weights, dtype=torch.float32), domains, cfg)  # (B, D)
    if tuple(w.shape) != (len(prompts), len(domains)):
        raise ValueError(f"router weights {tuple(w.shape)} do not fit {len(prompts)} prompts x {len(domains)} domains")
    on = (w > 0).any(dim=0).tolist()
    ids = [s for j, d in enumerate(domains) if on[j] for s in domain_stacks.get(d, ())]
    cols = [j for j, d in enumerate(domains) if on[j] for _ in domain_stacks.get(d, ())]
    sw = w[:, cols] if cols else torch.zeros(len(prompts), 0)  # (B, S)
    return RoutePlan(list(prompts), list(domains), w, ids, sw, [d for j, d in enumerate(domains) if not on[j]])


class RoutedModel:
    """A base with injected stack layers, a router and a :class:`StackStore`: routed forwards and answers.

    Args:
        model: the base with injected stack layers (stacks come from ``store``).
        tokenizer: its tokenizer (chat template for :meth:`generate`).
        router: anything with ``domains`` and ``domain_weights(prompts) -> [B, D]``.
        store: the run's stack store (attached to ``model``).
        cfg: the profile's ``router:`` section (chat floor, gate).
        domain_stacks: ``domain -> stack ids`` (default: the store's entries).
    """

    def __init__(self, model: nn.Module, tokenizer, router, store: StackStore, cfg: RouterConfig,
                 domain_stacks: Mapping[str, Sequence[str]] | None = None) -> None:
        if store.model is not model:
            raise ValueError("the stack store must attach stacks to this model")
        self.model, self.tokenizer, self.router, self.store, self.cfg = model, tokenizer, router, store, cfg
        self.domain_stacks = {d: list(s) for d, s in (domain_stacks or store.domain_stacks()).items()}
        self.lock = model_lock(model)

    def plan(self, prompts: Sequence[str]) -> RoutePlan:
        """Route ``prompts`` (one router call for the batch); loads nothing.

        The router's base-only feature forward sets the model's row weights too, so it
        runs under the model's lock.
        """
        prompts = [str(p) for p in prompts]
        with self.lock:
            weights = self.router.domain_weights(prompts)
        return plan_routes(prompts, weights, self.router.domains, self.domain_stacks, self.cfg)

    @contextlib.contextmanager
    def routed(self, plan: RoutePlan) -> Iterator[RoutePlan]:
        """Attach the plan's stacks (only those) and run the ``with`` block under its per-row weights.

        The block holds the model's lock: another thread's ``routed`` / ``generate`` waits until it
        ends, so its forwards never run under this plan's weights (nor this block under theirs).
        """
        with self.lock:
            self.store.ensure(plan.stack_ids)
            with row_weights(self.model, plan.stack_ids, plan.stack_weights):
                yield plan

    def _encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Chat-template prompts with the generation prompt, left-padded: ``input_ids`` / ``attention_mask`` ``[B, T]``."""
        tok = self.tokenizer
        texts = [tok.apply_chat_template(to_messages({"prompt": p, "response": ""})[0], tokenize=False,
                                         add_generation_prompt=True) for p in prompts]
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, streamer=None,
                 plan: RoutePlan | None = None) -> tuple[RoutePlan, list[str]]:
        """Greedy answers of ``prompts``, one batch, each row under its own routing.

        Args:
            prompts: ``B`` prompt texts.
            max_new_tokens: tokens generated per answer.
            streamer: a ``transformers`` streamer (``TextStreamer``; batch of one only).
            plan: a plan already made for ``prompts`` (else the router is called).

        Returns:
            ``(plan, answers)``.
        """
        plan = plan or self.plan(prompts)
        if streamer is not None and len(plan.prompts) != 1:
            raise ValueError("streaming needs exactly one prompt")
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self.lock:  # the tokenizer's padding side and the model's mode are shared too
            enc = self._encode(plan.prompts)
            was_training = self.model.training
            self.model.eval()
            try:
                with self.routed(plan):
                    out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=pad, streamer=streamer)
            finally:
                self.model.train(was_training)
        n = enc["input_ids"].shape[1]
        return plan, [tok.decode(row[n:], skip_special_tokens=True).strip() for row in out]


def load_routed_run(setup: RoutingSetup, run_name: str = "main", catalog=None) -> RoutedModel:
    """The trained run ``run_name`` of ``profile`` for routed inference: base, router, stack store.

    The base is loaded with empty stack layers; the run's router comes from the
    catalog (``router://<profile>/<run>``, checksum verified); the store's entries
    from the run manifest, its budget from ``router.store_budget_mb``.

    Raises:
        FileNotFoundError: the run has not trained yet.
        ValueError: no trained router, one trained on other stack versions than the run now has,
            or the base differs from the run's.
    """
    from brainstacks_core.routing.run import stale_router_reason, trained_router
    from brainstacks_core.training.run import current_run_dir, ensure_base, load_model

    ctx = setup.run.context
    folder = current_run_dir(ctx, run_name)
    manifest = json.loads((folder / "manifest.json").read_text())
    info = ensure_base(setup.run)
    if manifest.get("base_fingerprint") not in (None, info.fingerprint):
        raise ValueError(f"{folder}: trained on base {manifest['base_fingerprint']}, the profile's base is "
                         f"{info.fingerprint}")
    model, tok = load_model(setup.run, info)
    model.eval()
    router = trained_router(setup, run_name, model, tok, catalog)
    if router is None:
        raise ValueError(f"run {run_name!r} of profile {ctx.name!r} has no trained router: run "
                         f"`brainstacks train-router --config {ctx.source_path} --run {run_name}`")
    mb = setup.router.store_budget_mb
    store = StackStore.from_manifest(model, manifest, None if mb is None else int(mb * 1e6), info.fingerprint)
    stale = stale_router_reason(router, {e.stack_id: e.version for e in store.entries.values()},
                                f"brainstacks train-router --config {ctx.source_path} --run {run_name}")
    if stale:
        raise ValueError(stale)
    missing = [d for d in router.domains if not store.domain_stacks().get(d)]
    if missing:
        log.warning("router domains without frozen stacks in run %s: %s (routed to nothing)", run_name, missing)
    return RoutedModel(model, tok, router, store, setup.router)
