"""Training progress as plain dicts, for whatever shows it (a Prefect progress artifact, a log).

The core never imports an orchestrator: a caller passes ``progress: Callable[[dict], None]``
(``RunContext.progress``) and receives ``{"stage", "domain", "round", "step", "max_steps",
"val_loss"}`` at round start, on every trainer log/evaluation, and at round end.
"""

from __future__ import annotations

from typing import Callable

from transformers import TrainerCallback


class ProgressCallback(TrainerCallback):
    """Forwards the trainer's step and latest validation loss to ``progress``.

    Args:
        progress: the hook (exceptions are the caller's; ``continual`` wraps it).
        domain: the domain being trained.
        round_index: the boosting round.
    """

    def __init__(self, progress: Callable[[dict], None], domain: str, round_index: int) -> None:
        self.progress, self.domain, self.round = progress, domain, round_index
        self.val_loss: float | None = None

    def _emit(self, state) -> None:
        try:
            self.progress({"stage": "train", "domain": self.domain, "round": self.round, "step": state.global_step,
                           "max_steps": state.max_steps, "val_loss": self.val_loss})
        except Exception:  # noqa: BLE001 - a UI hook must never stop training
            pass

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self.val_loss = float(metrics["eval_loss"])
        self._emit(state)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._emit(state)
        return control
