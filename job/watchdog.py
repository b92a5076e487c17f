"""The watchdog: a run that stops making progress stops billing.

While the job trains or generates summaries, every optimizer step, validation batch, checkpoint save and generated
batch is a heartbeat (`beat`). A thread of its own looks at them; when none came for `train.stall_minutes` (a hung
collective, a GPU call that never returns, a generation stuck in a loop), it

1. writes a checkpoint where one can be written safely (`Saver`, given by the training loop), within
   CHECKPOINT_SECONDS: the same command then resumes from it;
2. says why: the `error (stalled): ...` line on stderr and in the log, /opt/ml/output/failure on SageMaker (the
   job's FailureReason) and `failure.txt` in the run folder;
3. ends the process with exit 9 (`errors.Stalled`): `os._exit` after flushing, since the main thread may be stuck in
   a C call that never returns, and a normal exit would wait for it.

Outside training and generation (loading, scoring, writing, publishing) nothing is watched.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 300.0
"""How long the stalled run may spend writing its last checkpoint; a save that hangs too is given up (a checkpoint
without its completion marker is never loaded)."""

Saver = Callable[[], str]
"""Writes a checkpoint of the work so far where it can; returns what it did, for the failure message."""


class Watchdog:
    """Heartbeats of one process, checked by a daemon thread every tenth of the stall time (at most 10 s)."""

    def __init__(
        self,
        stall_seconds: float,
        run_dir: Path,
        run_name: str,
        on_stall: Callable[[str], None] | None = None,
    ):
        self.stall_seconds = stall_seconds
        self.run_dir = run_dir
        self.run_name = run_name
        self.on_stall = on_stall or self._report_and_exit
        self._lock = threading.Lock()
        self._watching: list[tuple[str, Saver | None]] = []  # nested phases, innermost last
        self._last = time.monotonic()
        self._progress = "none yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def beat(self, what: str) -> None:
        with self._lock:
            self._last, self._progress = time.monotonic(), what

    @contextlib.contextmanager
    def watching(self, phase: str, saver: Saver | None = None) -> Iterator[None]:
        """Watch `phase` (`training`, `generating base model summaries`); its clock starts now."""
        with self._lock:
            self._watching.append((phase, saver))
            self._last, self._progress = time.monotonic(), "none yet"
        try:
            yield
        finally:
            with self._lock:
                self._watching.remove((phase, saver))

    def stalled_for(self) -> float | None:
        """Seconds since the last heartbeat of a watched phase; None when nothing is watched."""
        with self._lock:
            return time.monotonic() - self._last if self._watching else None

    def _run(self) -> None:
        interval = min(10.0, self.stall_seconds / 10)
        while not self._stop.wait(interval):
            idle = self.stalled_for()
            if idle is not None and idle >= self.stall_seconds:
                self.on_stall(self.reason(idle))
                return

    def _report_and_exit(self, reason: str) -> None:
        """The error line, the failure files, then exit 9 at once."""
        from job import cli, rundir, runtime
        from job.errors import Stalled

        error = Stalled(reason)
        rundir.write_failure_note(self.run_dir, f"{error.kind}: {reason}")
        runtime.hard_exit(cli.report(error))

    def reason(self, idle: float) -> str:
        """Write the checkpoint where the phase can, then the whole failure message."""
        with self._lock:
            phase, saver = self._watching[-1]
            progress = self._progress
        unit = "optimizer step" if phase == "training" else "generated batch"
        saved = _save_within(saver, CHECKPOINT_SECONDS) if saver else "nothing to checkpoint outside training"
        minutes = self.stall_seconds / 60
        return (
            f"no {unit} for {minutes:g} minutes while {phase} (last progress: {progress}, {idle:.0f} s ago), so the "
            f"run was ended to stop billing; {saved}. A hung collective (NCCL) or a GPU call that never returns "
            f"looks like this: run the same command again (same output.run_name={self.run_name}) to resume, or "
            f"raise train.stall_minutes (now {minutes:g}) if one step or batch really takes that long"
        )


def _save_within(saver: Saver, seconds: float) -> str:
    """The saver's own answer, or why there is none: it raised, or it did not finish in time."""
    answer: list[str] = []

    def save() -> None:
        try:
            answer.append(saver())
        except Exception as e:  # noqa: BLE001 - the run is ending either way; say why there is no checkpoint
            answer.append(f"no checkpoint: writing it failed ({e.__class__.__name__}: {e})")

    thread = threading.Thread(target=save, name="watchdog-checkpoint", daemon=True)
    thread.start()
    thread.join(seconds)
    return answer[0] if answer else f"no checkpoint: writing one did not finish within {seconds:g} s"


# ----------------------------------------------------------------------------------------------
# The process's watchdog: started by the job, fed from the training loop and the generation batches

_current: Watchdog | None = None


def start(stall_minutes: float, run_dir: Path) -> Watchdog | None:
    """This process's watchdog for the run in `run_dir` (none when stall_minutes is 0), in place of an earlier one.
    Its thread lives as long as the process and watches only inside `watching`."""
    global _current
    stop()
    if stall_minutes <= 0:
        return None
    _current = Watchdog(stall_minutes * 60, run_dir, run_dir.name).start()
    log.info("watchdog: no progress for %g minutes while training or generating ends the run", stall_minutes)
    return _current


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def beat(what: str) -> None:
    """A heartbeat: an optimizer step, a validation batch, a checkpoint, a generated batch."""
    if _current is not None:
        _current.beat(what)


@contextlib.contextmanager
def watching(phase: str, saver: Saver | None = None) -> Iterator[None]:
    if _current is None:
        yield
        return
    with _current.watching(phase, saver):
        yield
