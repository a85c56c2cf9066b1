"""Prefect progress artifacts fed by the core's ``progress`` hook (the core never imports Prefect)."""

from __future__ import annotations

import time
from typing import Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact


def artifact_key(*parts: str) -> str:
    """An artifact key Prefect accepts (lowercase letters, digits and dashes)."""
    return "-".join(parts).replace("_", "-").replace(".", "-").replace("/", "-").lower()


def progress_artifact(key: str, title: str, render: Callable[[dict], tuple[float, str, bool]],
                      min_interval_s: float = 1.0) -> Callable[[dict], None]:
    """A ``progress(info)`` callable that keeps one Prefect progress artifact up to date.

    Args:
        key: artifact key (one per flow run: the artifact's history shows every run).
        title: first words of the description before the first update.
        render: ``info -> (percent, description, final)``; a final update is never skipped.
        min_interval_s: at most one API update per interval (except final ones).
    """
    art = create_progress_artifact(progress=0.0, key=key, description=f"{title}: starting")
    last = {"t": 0.0}

    def hook(info: dict) -> None:
        pct, desc, final = render(info)
        now = time.monotonic()
        if not final and now - last["t"] < min_interval_s:
            return
        last["t"] = now
        update_progress_artifact(artifact_id=art, progress=pct, description=desc)

    return hook


def progress_hook(key: str, title: str, max_rounds: int, min_interval_s: float = 1.0) -> Callable[[dict], None]:
    """Training progress: domain, round of ``max_rounds``, step of max steps, current validation loss."""

    def render(info: dict) -> tuple[float, str, bool]:
        step, total = int(info.get("step") or 0), max(1, int(info.get("max_steps") or 1))
        pct = 100.0 * min(1.0, ((int(info.get("round") or 1) - 1) + step / total) / max(1, max_rounds))
        loss = info.get("val_loss")
        desc = (f"{title}: **{info.get('domain')}** round {info.get('round')}/{max_rounds}, step {step}/{total}, "
                f"val loss {'n/a' if loss is None else f'{loss:.4f}'}"
                + (f" ({info['status']})" if info.get("status") else ""))
        return pct, desc, info.get("stage") == "round done"

    return progress_artifact(key, title, render, min_interval_s)
