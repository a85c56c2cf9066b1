"""BestStackCallback: keep the best weights of the active stack during a round.

Brainstacks section 3.3. At every validation the active stack is snapshotted if
the loss improved; training stops and the best snapshot is restored when the
loss spikes (more than ``spike_threshold`` above the best so far) or after
``patience`` evaluations without improvement. Unlike the paper's reference code,
"best so far" starts at the loss the round began with (``begin_loss``), with the
untrained (zero, exact no-op) stack as the initial snapshot, so a spike at the
very first evaluation is caught and a round that never improves ends with the
no-op stack and ``improved == False``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    """What happened in one round, for the manifest and the catalog."""

    begin_loss: float
    best_loss: float
    best_step: int = 0
    stop_reason: str = "max_steps"
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        return self.best_loss < self.begin_loss


class BestStackCallback(TrainerCallback):
    """Snapshot/restore the active stack's parameters around validation.

    Args:
        params: the active stack's parameters (what is snapshotted and restored).
        begin_loss: validation loss of the model before this round.
        spike_threshold: stop and restore when ``loss > best + spike_threshold``.
        patience: stop and restore after this many evaluations without improvement.
        min_improvement: a loss must beat the best by more than this to count.
    """

    def __init__(self, params: dict[str, nn.Parameter], begin_loss: float, spike_threshold: float = 0.1,
                 patience: int = 4, min_improvement: float = 0.0) -> None:
        self.params = params
        self.spike_threshold = spike_threshold
        self.patience = patience
        self.min_improvement = min_improvement
        self.outcome = RoundOutcome(begin_loss=begin_loss, best_loss=begin_loss)
        self.best_state = self._snapshot()  # the untrained stack: restoring it is a no-op
        self._bad_evals = 0
        self.armed = False

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def restore_best(self) -> None:
        """Copy the best snapshot back into the active stack (bit-exact)."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.best_state[n])

    # -------------------------------------------------------------- callbacks
    def on_train_begin(self, args, state, control, **kwargs):
        self.armed = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.armed or not metrics or "eval_loss" not in metrics:
            return control
        loss, step = float(metrics["eval_loss"]), state.global_step
        out = self.outcome
        out.history.append((step, loss))
        if loss < out.best_loss - self.min_improvement:
            out.best_loss, out.best_step = loss, step
            self.best_state = self._snapshot()
            self._bad_evals = 0
            log.info("step %d: val loss %.4f improved; snapshot taken", step, loss)
        elif loss > out.best_loss + self.spike_threshold:
            out.stop_reason = f"spike: {loss:.4f} > best {out.best_loss:.4f} + {self.spike_threshold}"
            log.warning("step %d: %s; restoring best weights", step, out.stop_reason)
            control.should_training_stop = True
        else:
            self._bad_evals += 1
            if self._bad_evals >= self.patience:
                out.stop_reason = f"patience: {self._bad_evals} evaluations without improvement"
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.armed = False
        self.restore_best()
        return control
