"""``brainstacks generate``: routed answers from a trained run (its router and its stack store).

Interactive, not a Prefect flow: one command loads the base with empty stack layers,
routes the prompt(s) with the run's meta-router (chat floor, gate), loads only the
stacks routed to (checksum verified once per file version), streams the answer and
reports the stack store's hits, misses, evictions and load times. Heavy modules are
imported inside the command, so ``brainstacks --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``generate``'s own options (``--config`` / ``--artifact-root`` come from the CLI's common ones)."""
    p.add_argument("--run", default="main", help="run name under <store>/training (default: main)")
    p.add_argument("--prompt", action="append", required=True,
                   help="prompt text; repeat for a batch (routed per prompt, one forward batch, not streamed)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per answer (default: 64)")


def format_routing(plan, row: int = 0) -> str:
    """``chat 0.87, code 0.45, math 0 (gated)`` for one prompt of a plan."""
    parts = []
    for d, w in zip(plan.domains, plan.weights[row].tolist()):
        parts.append(f"{d} {w:.2f}" if w > 0 else f"{d} 0 (gated)")
    return ", ".join(parts)


def cli_generate(args: argparse.Namespace) -> int:
    """Print the routing weights, the stacks used, the (streamed) answer and the store's line."""
    from transformers import TextStreamer

    from brainstacks_core.lineage.catalog import Catalog
    from brainstacks_core.profile import load_profile
    from brainstacks_core.routing.superposition import load_routed_run
    from brainstacks_core.stacks.stack_io import StackFileError

    logging.getLogger("transformers").setLevel(logging.ERROR)
    profile = load_profile(args.config, args.artifact_root)
    cfg = profile.router
    try:
        routed = load_routed_run(profile.routing_setup, args.run, Catalog.for_context(profile.context))
    except (FileNotFoundError, ValueError) as exc:
        print(f"brainstacks generate: {exc}", file=sys.stderr)
        return 1
    plan = routed.plan(args.prompt)
    print(f"routing weights (chat floor {cfg.chat_floor:.2f}, gate {cfg.gate_threshold:.2f}):")
    for i, prompt in enumerate(plan.prompts):
        print(f"  [{i}] {format_routing(plan, i)}")
    gated = [s for d in plan.gated for s in routed.domain_stacks.get(d, ())]
    print(f"stacks used: {', '.join(plan.stack_ids) or 'none (base only)'}"
          + (f"; never loaded (gated): {', '.join(gated)}" if gated else ""))
    try:
        if len(plan.prompts) == 1:
            print("answer: ", end="", flush=True)
            streamer = TextStreamer(routed.tokenizer, skip_prompt=True, skip_special_tokens=True)
            routed.generate(plan.prompts, args.max_new_tokens, streamer=streamer, plan=plan)
        else:
            _, answers = routed.generate(plan.prompts, args.max_new_tokens, plan=plan)
            for i, a in enumerate(answers):
                print(f"answer [{i}]: {a}")
    except StackFileError as exc:  # a routed stack's file is missing, changed or corrupt: named, no traceback
        print(f"\nbrainstacks generate: {exc}\n(re-verify the run: brainstacks repair --config {args.config} "
              f"--run {args.run})", file=sys.stderr)
        return 1
    print(f"stacks attached: {', '.join(routed.store.attached) or 'none'}")
    print(routed.store.summary())
    return 0
