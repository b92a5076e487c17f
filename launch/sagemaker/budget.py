"""Cost guards of a SageMaker launch: a `--max-run` that follows the estimate instead of a day, and the worst case
it bills (`--budget USD` refuses a launch whose worst case is above it). Estimates and prices are launch.catalog's
and job/prices.json's. No AWS call. Imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from job import config as config_mod
from launch import catalog

MAX_RUN_FACTOR = 3.0
"""--max-run defaults to this many times the estimate: room for a slow start or a slow GPU, not for a hang."""
MIN_MAX_RUN_H = 1.0
FALLBACK_MAX_RUN_H = 24.0
"""Only where no estimate can be made (an unknown instance type, which the checks refuse anyway)."""


def default_max_run(cfg: config_mod.Config, instance_type: str, instance_count: int, all_gpus: bool) -> float:
    """Hours: MAX_RUN_FACTOR x the estimate (startup included), rounded up to a quarter hour, at least an hour."""
    try:
        hours = catalog.estimate_cost(cfg, instance_type, False, instance_count, all_gpus=all_gpus)["hours"]
    except catalog.UnknownInstance:
        return FALLBACK_MAX_RUN_H
    return max(MIN_MAX_RUN_H, math.ceil(MAX_RUN_FACTOR * hours * 4) / 4)


@dataclass(frozen=True)
class WorstCase:
    """What a job can bill at most: SageMaker stops it after `hours` (max run; for spot, max wait, which counts the
    waits too), at the on-demand price (a spot price never exceeds it)."""

    instance_type: str
    hours: float
    limit: str
    """The option that sets `hours`: --max-run or --max-wait."""
    per_hour: float | None
    instances: int

    @property
    def usd(self) -> float | None:
        return None if self.per_hour is None else self.hours * self.per_hour * self.instances

    def line(self) -> str:
        instances = f" x {self.instances} instances" if self.instances > 1 else ""
        if self.usd is None:
            return f"worst case: {self.hours:g} h ({self.limit}){instances}; no price known (job/prices.json)"
        return (
            f"worst case: ${self.usd:.2f} ({self.limit} {self.hours:g} h x ${self.per_hour:.3f}/h on demand"
            f"{instances}): SageMaker stops the job there"
        )


def worst_case(instance_type: str, instance_count: int, max_run_s: int, max_wait_s: int | None) -> WorstCase:
    spot = max_wait_s is not None
    return WorstCase(
        instance_type=instance_type,
        hours=(max_wait_s if spot else max_run_s) / 3600,
        limit="--max-wait" if spot else "--max-run",
        per_hour=catalog.prices()["on_demand"].get(instance_type),
        instances=instance_count,
    )


def budget_problem(worst: WorstCase, budget: float | None) -> str | None:
    """A budget the worst case exceeds, with the limit that would fit it."""
    if budget is None:
        return None
    if budget <= 0:
        return f"--budget {budget:g}: give the most the job may cost, in USD (e.g. --budget 5)"
    if worst.usd is None:
        return f"--budget: no price for {worst.instance_type} in job/prices.json, so the worst case is unknown"
    if worst.usd <= budget:
        return None
    fits = math.floor(budget / (worst.per_hour * worst.instances) * 4) / 4
    fix = f"lower {worst.limit} to {fits:g} h or less" if fits > 0 else "use a cheaper instance"
    return (
        f"--budget {budget:g}: the worst case is ${worst.usd:.2f} ({worst.limit} {worst.hours:g} h x "
        f"${worst.per_hour:.3f}/h x {worst.instances} instance(s)); {fix}, or raise --budget"
    )
