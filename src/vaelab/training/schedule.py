"""Where a run stands on its schedules, and the step plan of a wall-clock budget.

Every schedule is a pure function of the run's fraction f in [0, 1]: the learning rate (constant
or cosine, with an optional linear warm-up) and the KL weight's warm-up. Without a budget, f is
the fractional epoch over `--epochs`. With `--budget S`, f is the step over the number of steps
the budget is planned to hold: the run measures its own speed and re-plans that number as it
goes (at every REPLAN_EVERY of the budget), so its schedules end where the budget does; a
re-plan spreads the fraction still to go over its new steps, so the fraction never steps back.
Each re-plan is recorded as (step, planned steps); the run stops at the last plan's step count, and
config.json keeps the plan, so `--config RUN/config.json` replays the same steps with the same
learning rates and KL weights on any machine, without the clock (docs/likelihood.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from vaelab.config import TrainConfig
from vaelab.errors import VaelabError

REPLAN_EVERY = 0.02  # of the budget: re-plan after each 2% of it, so the last plan covers its final 2%
FIRST_PLAN_STEPS = 2  # the first steps (allocations, caches) are slower than the rest: plan after them

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(min|h|m|s)?", re.IGNORECASE)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration written as 90, 90s, 30m, 2h or 1h30m; anything else is an error naming the forms."""
    compact = text.strip().replace(" ", "")
    position, seconds = 0, 0.0
    while position < len(compact):
        match = _DURATION.match(compact, position)
        if match is None or match.end() == position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower() if match.group(2) else None]
        position = match.end()
    if not compact or position != len(compact) or not math.isfinite(seconds) or seconds <= 0:
        raise VaelabError(f"--budget {text!r} is not a duration; write seconds or a unit: 90, 90s, 30m, 2h, 1h30m")
    return seconds


def learning_rate_at(config: TrainConfig, fraction: float) -> float:
    """Adam's learning rate at run fraction f: constant or cosine from lr to lr_final, times min(1, f / lr_warmup)."""
    fraction = min(1.0, max(0.0, fraction))
    rate = config.lr
    if config.lr_schedule == "cosine":
        rate = config.lr_final + (config.lr - config.lr_final) * 0.5 * (1.0 + math.cos(math.pi * fraction))
    if config.lr_warmup > 0:
        rate *= min(1.0, fraction / config.lr_warmup)
    return rate


def warmup_weight(config: TrainConfig, fraction: float) -> float:
    """The KL warm-up laid over the run: min(1, f / warmup_fraction); 1 without one (the epochs' warm-up is
    vaelab.objectives.kl_weight_at's)."""
    if config.warmup_fraction <= 0:
        return 1.0
    return min(1.0, max(0.0, fraction) / config.warmup_fraction)


@dataclass
class BudgetPlan:
    """The steps a `--budget` run plans: entries (from step, planned total steps), in the order made.

    `live` plans from the clock (a new run, or one resumed from its checkpoint); otherwise the
    entries are a recorded plan to replay, and the clock is never read.
    """

    budget: float
    entries: list[tuple[int, int]] = field(default_factory=list)
    live: bool = True
    _last_replan: float = 0.0  # the elapsed seconds of the last re-plan
    _since: tuple[int, float] | None = None  # (step, elapsed) from which the speed is measured
    _segments: list[tuple[int, float, int]] = field(default_factory=list)  # (start, fraction there, total)

    @classmethod
    def for_run(cls, config: TrainConfig, recorded: list[tuple[int, int]] | None = None) -> BudgetPlan:
        """The plan of `config`'s budget: its recorded plan replayed, else a live one continuing `recorded`
        (the entries a resumed run's checkpoint holds)."""
        if config.budget_plan:
            return cls(config.budget, [tuple(entry) for entry in config.budget_plan], live=False)
        return cls(config.budget, [tuple(entry) for entry in recorded or []])

    @property
    def steps(self) -> int | None:
        """The planned total number of steps (the last plan's); None before the first plan."""
        return self.entries[-1][1] if self.entries else None

    def total_at(self, step: int) -> int | None:
        """The planned total in force at global step `step` (0-based): the last entry made at or before it."""
        segment = self._segment(step)
        return None if segment is None else segment[2]

    def fraction(self, step: int) -> float:
        """The run fraction of global step `step`, continuous and rising across re-plans: each plan (s, T)
        spreads the fraction left at step s evenly over its steps s..T (0 before the first plan)."""
        segment = self._segment(step)
        if segment is None:
            return 0.0
        start, start_fraction, total = segment
        return min(1.0, start_fraction + (1.0 - start_fraction) * (step - start) / (total - start))

    def done(self, step: int) -> bool:
        """True when step `step` lies beyond the plan (the budget is spent); a replay ends at its recorded count."""
        total = self.total_at(step)
        return total is not None and step >= total

    def _segment(self, step: int) -> tuple[int, float, int] | None:
        """(start, fraction at start, planned total) of the plan in force at `step`."""
        if len(self._segments) != len(self.entries):  # entries were added: extend the segments
            for start, total in self.entries[len(self._segments) :]:
                if self._segments:
                    previous = self._segments[-1]
                    fraction = previous[1] + (1.0 - previous[1]) * (start - previous[0]) / (previous[2] - previous[0])
                else:
                    fraction = 0.0
                self._segments.append((start, min(1.0, fraction), total))
        found = None
        for segment in reversed(self._segments):
            if segment[0] <= step:
                found = segment
                break
        return found

    def observe(self, step: int, elapsed: float) -> None:
        """Before global step `step`, after `elapsed` seconds of training: re-plan when due (live plans only).

        The first plan comes after FIRST_PLAN_STEPS steps, from their speed; each later one after
        another REPLAN_EVERY of the budget, from the speed measured since that first plan (or since
        a resume), fitting the steps left into the budget's remaining seconds. A plan always leaves
        at least one more step.
        """
        if not self.live or step < FIRST_PLAN_STEPS:
            return
        if self._since is None:  # the first look: a new run plans now, a resumed one keeps its plan a while
            self._since, self._last_replan = (step, elapsed), elapsed
            if not self.entries:
                self._plan(step, elapsed, rate=step / max(elapsed, 1e-9))
            return
        steps, seconds = step - self._since[0], elapsed - self._since[1]
        if elapsed - self._last_replan >= REPLAN_EVERY * self.budget and steps > 0 and seconds > 0:
            self._plan(step, elapsed, rate=steps / seconds)

    def _plan(self, step: int, elapsed: float, rate: float) -> None:
        self.entries.append((step, step + max(1, int((self.budget - elapsed) * rate))))
        self._last_replan = elapsed
