"""Fault injection for tests: `DIALOGSUM_FAULTS=fault[@step],...` provokes a failure inside a real run (a subprocess
included), so a test sees exactly what a user would: the message, the exit code and the files left behind. Unset in
real runs: every call is a no-op.

The job calls `inject(point, **context)` at fixed points; each fault fires at one point:

    fault        point          what happens
    nan_loss@N   train_step     the trainable (LoRA) weights become NaN after optimizer step N
    oom@N        train_step     torch.cuda.OutOfMemoryError is raised after step N, as a CUDA allocation raises it
    sigterm@N    train_step     the process sends itself SIGTERM after step N (spot interruption, `docker stop`)
    sigkill@N    train_step     the process sends itself SIGKILL after step N (a lost machine: nothing runs after it)
    slow_step    train_step     every step sleeps DIALOGSUM_SLOW_STEP_SECONDS (default 1), to signal from outside
    stall@N      train_step     the process hangs after step N, as in a collective that never returns (the watchdog)
    oom_load     load_model     torch.cuda.OutOfMemoryError is raised where the weights load
    oom_generate@N generate_batch torch.cuda.OutOfMemoryError is raised by a generation batch of N prompts
    stall_generate@N generate_batch a generation batch of N prompts never returns (the watchdog)
    sigterm_generate generate_batch the process sends itself SIGTERM as a batch starts generating (`job serve`'s stop)
    disk_full    write_results  OSError(ENOSPC) is raised where the result files are written

A train_step fault without @N fires after every step. docs/bad-inputs.md lists what each one makes the job say.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from job.errors import ConfigInputError

log = logging.getLogger(__name__)

ENV = "DIALOGSUM_FAULTS"
SLOW_STEP_ENV = "DIALOGSUM_SLOW_STEP_SECONDS"


@dataclass(frozen=True)
class Fault:
    name: str
    step: int | None  # None: at every call of its point


def _nan_loss(model, **_) -> None:
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.fill_(math.nan)


def _oom(**_) -> None:
    import torch

    raise torch.cuda.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by {ENV}; a real allocation failure reads the same)"
    )


def _signal(signum: int) -> Callable[..., None]:
    def send(**_) -> None:
        os.kill(os.getpid(), signum)

    return send


def _slow_step(**_) -> None:
    time.sleep(float(os.environ.get(SLOW_STEP_ENV, "1")))


def _stall(**_) -> None:
    """Hang with the GIL released, as a collective or a CUDA call that never returns: only the watchdog ends it."""
    while True:
        time.sleep(3600)


def _disk_full(run_dir: Path, **_) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "predictions.jsonl"))


# fault name -> (point where it fires, action called with that point's context)
FAULTS: dict[str, tuple[str, Callable[..., None]]] = {
    "nan_loss": ("train_step", _nan_loss),
    "oom": ("train_step", _oom),
    "sigterm": ("train_step", _signal(signal.SIGTERM)),
    "sigkill": ("train_step", _signal(signal.SIGKILL)),
    "slow_step": ("train_step", _slow_step),
    "stall": ("train_step", _stall),
    "oom_load": ("load_model", _oom),
    "oom_generate": ("generate_batch", _oom),
    "stall_generate": ("generate_batch", _stall),
    "sigterm_generate": ("generate_batch", _signal(signal.SIGTERM)),
    "disk_full": ("write_results", _disk_full),
}


def listed() -> list[Fault]:
    """The faults in DIALOGSUM_FAULTS. A misspelt one is an error: a test that injects nothing would pass silently."""
    faults = []
    for item in os.environ.get(ENV, "").split(","):
        if not item.strip():
            continue
        name, at_sign, at = item.strip().partition("@")
        if name not in FAULTS or (at_sign and not at.isdigit()):
            raise ConfigInputError(
                f"{ENV}: cannot read {item.strip()!r}; use fault[@step] with a fault among {', '.join(FAULTS)}"
            )
        faults.append(Fault(name, int(at) if at else None))
    return faults


def armed(name: str, step: int | None = None) -> bool:
    """True when fault `name` is listed and, given a step, fires at that step."""
    return any(f.name == name and (step is None or f.step in (None, step)) for f in listed())


def inject(point: str, **context) -> None:
    """Called at fixed points of the job; raises, signals or corrupts state only for the faults listed."""
    if not os.environ.get(ENV):
        return
    for fault in listed():
        where, action = FAULTS[fault.name]
        if where != point or (fault.step is not None and context.get("step") != fault.step):
            continue
        log.warning("injecting fault %s at %s%s", fault.name, point, f" (step {fault.step})" if fault.step else "")
        action(**context)
