"""Learning-rate schedules: the factor both learning rates are multiplied by, as a function of
the run's progress (step / total steps: 0 at the first step, just under 1 at the last).

The total is the run's length in steps (`train.steps`, or `train.epochs` converted); a run cut
short by `train.max_minutes` stops part-way along its schedule, and a resumed run given a new
total continues on the schedule of that total.
"""

from __future__ import annotations

import math
from collections.abc import Callable

LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    # Decay to zero at the end, so that the last weights settle instead of circling at the
    # full step size. Not a free gain: on `best` at 6 epochs cosine cost FID (BENCHMARKS.md).
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The schedule's factor at `step` of a run of `total` steps."""
    return LR_SCHEDULES[schedule](min(step / total, 1.0) if total > 0 else 0.0)
