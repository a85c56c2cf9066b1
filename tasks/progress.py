"""Prefect progress artifacts fed by the core's ``progress`` hook (the core never imports Prefect)."""

from __future__ import annotations

import time
from typing import Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact


def artifact_key(*parts: str) -> str:
    """An artifact key Prefect accepts (lowercase letters, digits and dashes)."""
    return "-".join(parts).replace("_", "-").replace(".", "-").replace("/", "-").lower()


class ProgressArtifact:
    """A ``progress(info)`` callable that keeps one Prefect progress artifact up to date.

    Call it with the core's progress ``info`` dicts; call :meth:`finish` when the work ends
    (trained, reused, skipped or failed), so the artifact never stays at "starting" after its
    run: a reused domain or a fully cached stage sends no progress at all.

    Args:
        key: artifact key (one per flow run: the artifact's history shows every run).
        title: first words of the description before the first update.
        render: ``info -> (percent, description, final)``; a final update is never skipped.
        min_interval_s: at most one API update per interval (except final ones).
    """

    def __init__(self, key: str, title: str, render: Callable[[dict], tuple[float, str, bool]],
                 min_interval_s: float = 1.0) -> None:
        self.title, self.render, self.min_interval_s = title, render, min_interval_s
        self.id = create_progress_artifact(progress=0.0, key=key, description=f"{title}: starting")
        self.last_t = 0.0
        self.last: tuple[float, str] = (0.0, f"{title}: starting")

    def __call__(self, info: dict) -> None:
        pct, desc, final = self.render(info)
        now = time.monotonic()
        if not final and now - self.last_t < self.min_interval_s:
            return
        self.last_t = now
        self._update(pct, desc)

    def finish(self, outcome: str, progress: float = 100.0) -> None:
        """The final state: ``progress`` % and ``<title>: <outcome>`` (always sent)."""
        self._update(progress, f"{self.title}: {outcome}")

    def _update(self, pct: float, desc: str) -> None:
        if (pct, desc) != self.last:
            update_progress_artifact(artifact_id=self.id, progress=pct, description=desc)
            self.last = (pct, desc)


def progress_artifact(key: str, title: str, render: Callable[[dict], tuple[float, str, bool]],
                      min_interval_s: float = 1.0) -> ProgressArtifact:
    """A :class:`ProgressArtifact` (kept as a function: every stage's task builds one)."""
    return ProgressArtifact(key, title, render, min_interval_s)


def progress_hook(key: str, title: str, max_rounds: int, min_interval_s: float = 1.0) -> ProgressArtifact:
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
