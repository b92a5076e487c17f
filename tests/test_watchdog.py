"""The watchdog (job/watchdog.py): a run whose steps stop ends with exit 9, the failure reason on stderr, in
SageMaker's failure file and in the run folder, and a checkpoint the same command resumes from.

The stall comes from DIALOGSUM_FAULTS=stall@N (job/faults.py): after optimizer step N the training loop hangs with
the GIL released, as in a collective that never returns. The job runs in a subprocess (the watchdog ends the process
with os._exit) in SageMaker's layout, with /opt/ml moved to a temp folder: `TRAINING_JOB_NAME` set, the run folder
in <opt_ml>/model/<job name>, the checkpoints in <opt_ml>/checkpoints."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from job import rundir, training, watchdog
from job.errors import Stalled
from job.faults import ENV as FAULTS
from tests.conftest import REPO, job_env

STALL_MINUTES = 0.25
"""15 s: longer than a step of the small batches below on a loaded 2-core machine (a step of the `test` preset's
batch of 8 took up to 9 s there), short enough to wait for."""

MARGIN_S = 90
"""What the stalled process may take beyond the stall itself: the checkpoint, the report, the exit."""

QUICK = [
    "train.max_steps=3",
    "train.eval_steps=3",
    "train.save_steps=3",  # no scheduled checkpoint before the stall: the one it resumes from is the watchdog's
    "train.logging_steps=1",
    "train.batch_size=2",
    "data.max_length=128",
    "data.max_summary_tokens=32",
    "data.max_train_examples=16",
    "data.max_eval_examples=2",
    "eval.base=false",
    "eval.num_dialogues=1",
    "eval.max_new_tokens=4",
    "eval.bootstrap_samples=10",
    f"train.stall_minutes={STALL_MINUTES}",
]

ON_SAGEMAKER = (
    "import sys; from pathlib import Path; from job import runtime; runtime.OPT_ML = Path(sys.argv[1]); "
    "from job.cli import main; sys.exit(main(sys.argv[2:]))"
)
"""`python -m job` with SageMaker's /opt/ml at argv[1]."""

JOB_NAME = "dialogsum-stall-20261204010000"


def sagemaker_job(opt_ml: Path, *args: str, fault: str | None = None) -> subprocess.Popen:
    env = job_env(TRAINING_JOB_NAME=JOB_NAME, **({FAULTS: fault} if fault else {}))
    return subprocess.Popen(
        [sys.executable, "-c", ON_SAGEMAKER, str(opt_ml), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )


def read_until(proc: subprocess.Popen, marker: str, lines: list[str]) -> float:
    """Collect the output until a line holds `marker`; returns when it was seen."""
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if marker in line:
            return time.monotonic()
    raise AssertionError(f"{marker!r} never printed:\n" + "".join(lines[-60:]))


@pytest.mark.slow
def test_a_stalled_run_ends_with_its_exit_code_a_checkpoint_and_the_reason_then_resumes(tmp_path):
    opt_ml = tmp_path / "opt_ml"
    args = ["train", "--config", "test", *QUICK]
    lines: list[str] = []
    proc = sagemaker_job(opt_ml, *args, fault="stall@2")
    stalled_at = read_until(proc, "injecting fault stall at train_step", lines)
    lines += proc.stdout.readlines()  # type: ignore[union-attr]
    code = proc.wait(timeout=STALL_MINUTES * 60 + MARGIN_S)
    ended_after = time.monotonic() - stalled_at
    out = "".join(lines)
    assert code == Stalled.exit_code == 9, out[-4000:]
    assert STALL_MINUTES * 60 <= ended_after <= STALL_MINUTES * 60 + MARGIN_S

    checkpoints = opt_ml / "checkpoints"
    run_dir = opt_ml / "model" / JOB_NAME
    saved = checkpoints / "checkpoint-2"
    error = next(line for line in out.splitlines() if line.startswith("error (stalled): "))
    assert error.startswith(
        f"error (stalled): no optimizer step for {STALL_MINUTES:g} minutes while training (last progress: optimizer "
        f"step 2, "
    )
    assert f"so the run was ended to stop billing; checkpoint of step 2 saved in {saved}." in error
    assert f"run the same command again (same output.run_name={JOB_NAME}) to resume" in error
    assert "Traceback" not in out
    reason = "stalled: " + error.removeprefix("error (stalled): ")
    assert (opt_ml / "output" / "failure").read_text() == reason[:1024]
    assert (run_dir / rundir.FAILURE_NOTE).read_text() == reason + "\n"
    assert [p.name for p in training.complete_checkpoints(checkpoints)] == ["checkpoint-2"]
    assert training.checkpoint_loadable(saved)
    assert not rundir.is_complete(run_dir)

    again = sagemaker_job(opt_ml, *args)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out[-4000:]
    assert f"resuming from checkpoint {saved}" in out
    assert "metrics: step=1 " not in out and "metrics: step=3 " in out  # steps 1-2 were not trained again
    assert rundir.verify(run_dir) == []
    assert not (run_dir / rundir.FAILURE_NOTE).exists()


def test_a_stalled_generation_is_reported_with_nothing_to_checkpoint(tmp_path):
    reasons: list[str] = []
    dog = watchdog.Watchdog(0.3, tmp_path, "run", on_stall=reasons.append).start()
    try:
        with dog.watching("generating base model summaries"):
            dog.beat("base model summaries: 4 of 6 dialogues")
            deadline = time.monotonic() + 30
            while not reasons and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        dog.stop()
    (reason,) = reasons
    assert reason.startswith(
        "no generated batch for 0.005 minutes while generating base model summaries (last progress: base model "
        "summaries: 4 of 6 dialogues, "
    )
    assert "nothing to checkpoint outside training" in reason


def test_heartbeats_keep_it_quiet_and_nothing_is_watched_between_phases(tmp_path):
    reasons: list[str] = []
    dog = watchdog.Watchdog(0.5, tmp_path, "run", on_stall=reasons.append).start()
    try:
        with dog.watching("training", lambda: "checkpoint saved"):
            for step in range(12):  # 1.2 s of steps, each well within the stall time
                time.sleep(0.1)
                dog.beat(f"optimizer step {step}")
        assert dog.stalled_for() is None
        time.sleep(1.0)  # loading, scoring, writing: not watched
    finally:
        dog.stop()
    assert reasons == []


def test_a_checkpoint_that_hangs_too_is_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(watchdog, "CHECKPOINT_SECONDS", 0.2)
    reasons: list[str] = []
    hung = threading.Event()
    dog = watchdog.Watchdog(0.2, tmp_path, "run", on_stall=reasons.append)
    with dog.watching("training", lambda: str(hung.wait(60))):
        dog.start()
        deadline = time.monotonic() + 30
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.05)
    dog.stop()
    hung.set()
    assert "no checkpoint: writing one did not finish within 0.2 s" in reasons[0]


@pytest.mark.parametrize(
    ("world_size", "in_optimizer_step", "says"),
    [
        ("2", False, "no checkpoint: under torchrun saving one waits for every rank, and a rank is what hangs; the "
                     "newest complete checkpoint in {dir} is kept"),
        ("1", True, "no checkpoint: the stall is inside optimizer step 6, with the weights half updated; the newest "
                    "complete checkpoint in {dir} is kept"),
    ],
)  # fmt: skip
def test_no_checkpoint_where_one_would_be_unsafe(tmp_path, monkeypatch, world_size, in_optimizer_step, says):
    """Only the Trainer's step counter is read before these refusals: a namespace stands in for the Trainer (the save
    itself runs on the real one in the test above)."""
    from types import SimpleNamespace

    monkeypatch.setenv("WORLD_SIZE", world_size)
    beats = training.Heartbeats()
    beats.in_optimizer_step = in_optimizer_step
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=5))
    assert training.stalled_checkpoint(trainer, beats, tmp_path) == says.format(dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
