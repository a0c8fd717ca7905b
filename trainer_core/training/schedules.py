"""Learning-rate schedules as pure functions of the step.

`learning_rate_at(step, ...)` is the rate used by optimizer update number
`step` (0-based). Warmup is linear and reaches the peak on its last step:
`peak * (step + 1) / warmup_steps` for `step < warmup_steps`, so no update is
wasted at rate 0. After warmup the decay runs over the remaining
`total_steps - warmup_steps` updates with progress p = (step - warmup) / span:

  constant    peak
  linear      peak - (peak - floor) * p
  cosine      floor + (peak - floor) * (1 + cos(pi * p)) / 2
  polynomial  floor + (peak - floor) * (1 - p) ** power

Being pure functions, a resumed run recomputes the exact rate from the step:
the scheduler has no state to save.
"""

from __future__ import annotations

import math


def learning_rate_at(step: int, *, schedule: str, peak: float, total_steps: int,
                     warmup_steps: int = 0, floor: float = 0.0, power: float = 1.0) -> float:
    """Rate for optimizer update `step` of `total_steps`; see the module docstring."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "linear":
        return peak - (peak - floor) * progress
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "polynomial":
        return floor + (peak - floor) * (1.0 - progress) ** power
    raise ValueError(f"unknown schedule {schedule!r}")


def schedule_for(config, total_steps: int):
    """A `step -> learning rate` function for a RunConfig."""
    def rate(step: int) -> float:
        return learning_rate_at(
            step, schedule=config.lr_schedule, peak=config.learning_rate, total_steps=total_steps,
            warmup_steps=config.warmup_steps, floor=config.min_learning_rate, power=config.polynomial_power,
        )
    return rate
