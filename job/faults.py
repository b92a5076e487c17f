"""Fault injection for tests: `DIALOGSUM_FAULTS=point[@N],...` provokes a failure at a named point of a real run
(a subprocess included), so tests see exactly what a user would. Unset in real runs: every call is a no-op."""

from __future__ import annotations

import os

ENV = "DIALOGSUM_FAULTS"


def armed(point: str, step: int | None = None) -> bool:
    """True when `point` (optionally `point@step`) is listed in DIALOGSUM_FAULTS."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return False
    for item in spec.split(","):
        name, _, at = item.strip().partition("@")
        if name == point and (not at or step is None or int(at) == step):
            return True
    return False


def inject(point: str, **context) -> None:
    """Called at fixed points of the job; raises or corrupts state only when the point is armed."""
    if not os.environ.get(ENV):
        return
