"""A training-health monitor: says in plain words what the tutorials learnt by trial.

It reads the metric rows the trainer logs (losses, D's accuracy, sample diversity and, when
evaluation is on, the class entropy of generated digits) and raises a `Finding` when a
pattern holds for a sustained window. Each finding names a likely remedy. Findings are
reported once per episode: a problem that clears and comes back is reported again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

WINDOW = 5  # logged rows a pattern must hold for (rows come every `log_every` steps)


@dataclass(frozen=True)
class Finding:
    code: str  # "d_wins", "collapse", "diverged", "oscillation"
    step: int
    message: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.message}"


REMEDIES = {
    "d_wins": (
        "the discriminator is winning (D loss near 0, D right about ~all real and fake images): "
        "G gets no useful gradient. Try a lower D learning rate or a higher G one "
        "(--set train.d_lr=...), one-sided label smoothing (--label-smoothing 0.1), "
        "dropout in D, or fewer D steps per G step"
    ),
    "collapse": (
        "the generator is collapsing (its samples are losing variety{detail}): "
        "try a lower G learning rate, label smoothing, more D steps per G step "
        "(--d-steps 2), or a loss with better gradients (non-saturating, hinge)"
    ),
    "diverged": (
        "training diverged (a loss is NaN or Inf): stopped and kept the last good weights. "
        "Lower the learning rates (--d-lr, --g-lr), or add label smoothing"
    ),
    "oscillation": (
        "training oscillates (D's accuracy on fakes swings between near 0 and near 1): "
        "lower both learning rates, use Adam beta1 = 0.5, or slow one side (two-time-scale "
        "learning rates)"
    ),
}


class HealthMonitor:
    def __init__(self, window: int = WINDOW, n_classes: int = 10) -> None:
        self.window = window
        self.rows: deque[dict[str, Any]] = deque(maxlen=max(window, 4 * window))
        self.max_entropy = math.log(n_classes)
        self.active: set[str] = set()

    def update(self, row: dict[str, Any]) -> list[Finding]:
        """Feed one metric row; returns the findings that start at this row."""
        self.rows.append(row)
        current = {code for code, holds in self._checks().items() if holds}
        new = current - self.active
        self.active = current
        return [Finding(code, int(row.get("step", 0)), self._message(code))
                for code in sorted(new)]

    # -- detectors ---------------------------------------------------------------------

    def _checks(self) -> dict[str, bool]:
        return {
            "diverged": self._diverged(),
            "d_wins": self._d_wins(),
            "collapse": self._collapse() is not None,
            "oscillation": self._oscillation(),
        }

    def _recent(self, n: int) -> list[dict[str, Any]]:
        return list(self.rows)[-n:] if len(self.rows) >= n else []

    def _diverged(self) -> bool:
        row = self.rows[-1]
        return any(isinstance(v, float) and not math.isfinite(v)
                   for k, v in row.items() if k in ("d_loss", "g_loss"))

    def _d_wins(self) -> bool:
        rows = self._recent(self.window)
        return bool(rows) and all(
            r["d_loss"] < 0.05 and r["d_acc_real"] > 0.98 and r["d_acc_fake"] > 0.98 for r in rows)

    def _collapse(self) -> str | None:
        """Sample diversity under 0.3 of real digits', or a class entropy that fell below half
        its maximum."""
        diversity = [r["diversity"] for r in self.rows if r.get("diversity") is not None]
        if diversity and diversity[-1] < 0.3:
            return f", diversity {diversity[-1]:.2f} of real digits'"
        entropy = [r["class_entropy"] for r in self.rows if r.get("class_entropy") is not None]
        if len(entropy) >= 2 and entropy[-1] < 0.5 * self.max_entropy and entropy[-1] < entropy[0]:
            return f", class entropy {entropy[-1]:.2f} of at most {self.max_entropy:.2f}"
        return None

    def _oscillation(self) -> bool:
        rows = self._recent(2 * self.window)
        if not rows:
            return False
        states = [1 if r["d_acc_fake"] > 0.9 else -1 if r["d_acc_fake"] < 0.1 else 0 for r in rows]
        extremes = [s for s in states if s]
        swings = sum(a != b for a, b in zip(extremes, extremes[1:], strict=False))
        return swings >= 3

    def _message(self, code: str) -> str:
        if code == "collapse":
            return REMEDIES[code].format(detail=self._collapse() or "")
        return REMEDIES[code]


def diversity(fake: Any, real: Any) -> float:
    """Mean pairwise distance between generated images over the same for real images: about
    1 for a healthy generator, near 0 when it draws one digit over and over."""
    import torch

    def spread(x: torch.Tensor) -> float:
        flat = x.reshape(len(x), -1).float()
        return torch.pdist(flat).mean().item()

    return spread(fake) / max(spread(real), 1e-12)
