"""The paper's per-domain RL table (6.2): before vs after RL, per domain with an RL stage.

Reads the ``rl`` entries ``training.rl_stage`` writes into a run manifest. Columns:
the method, the RL stack and whether it was kept, the domain's SFT validation loss
before/after the RL stack, the guard loss (held-out DPO loss, or minus the mean reward
of greedy completions for GRPO) and the method's benchmark on held-out rows
(preference accuracy for DPO, mean reward for GRPO) before/after, and how the guard
ended (``max_steps``, ``spike: ...``, ``train loss spike: ...``).
"""

from __future__ import annotations


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def rl_rows(manifest: dict) -> list[dict]:
    """One row per domain with an RL stage, in curriculum order."""
    rows = []
    for dom in manifest.get("domains_order", []):
        rl = manifest.get("domains", {}).get(dom, {}).get("rl")
        if rl:
            rows.append({"domain": dom, **rl})
    return rows


def rl_table(manifest: dict) -> str:
    """Markdown table of the run's RL stages (a sentence when it has none)."""
    rows = rl_rows(manifest)
    if not rows:
        return "No per-domain RL stage in this run (`training.rl` is empty)."
    lines = ["| domain | method | stack | status | val loss before | val loss after | guard before | guard after | "
             "held-out metric | before | after | guard stop |", "|" + "---|" * 12]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['domain']} | {r['method']} | {r['stack_id']} | {r['status']} | {_f(b['val_loss'])} | "
                     f"{_f(a['val_loss'])} | {_f(b['guard_loss'])} | {_f(a['guard_loss'])} | {r['metric']} | "
                     f"{_f(b['metric'])} | {_f(a['metric'])} | {r['stop_reason']} |")
    return "\n".join(lines)
