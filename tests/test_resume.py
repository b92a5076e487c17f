"""Interruptions through the real CLI on the `test` preset: a run killed with SIGKILL and started again with the same
command resumes from its newest complete checkpoint and ends like an uninterrupted run; SIGTERM saves a marked
checkpoint and exits non-zero without finishing the run; a corrupt newest checkpoint is skipped for the one before;
a checkpoint folder copied in from elsewhere (train.checkpoint_dir) resumes too.

Interruptions come from DIALOGSUM_FAULTS (job/faults.py): the process signals itself after a given optimizer step, so
the step a run dies at is exact rather than a race against a timer."""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from job import rundir, training
from job.faults import ENV as FAULTS
from tests.conftest import job_env, run_job, run_job_here

pytestmark = pytest.mark.slow

STEPS = ["train.max_steps=12", "train.save_steps=4", "train.eval_steps=4"]
BRIEF_EVAL = ["eval.num_dialogues=2", "eval.base=false", "eval.max_new_tokens=8", "eval.bootstrap_samples=20"]
"""Scoring is not what these tests look at: summarize little, quickly."""

LOSS_NOISE = 0.03
"""The best validation losses of a resumed and an uninterrupted run differ by ~0.01 on CPU (float summation order);
training moves them by ~0.5 over the 12 steps."""


@dataclass
class Run:
    dir: Path
    returncode: int
    stderr: str

    @property
    def metrics(self) -> dict:
        return json.loads((self.dir / "metrics.json").read_text())

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"


def train(parent: Path, name: str, *overrides: str, fault: str | None = None) -> Run:
    args = ["train", "--config", "test", f"output.uri={parent}", f"output.run_name={name}", *STEPS, *BRIEF_EVAL]
    if fault:  # the job signals its own process
        proc = run_job(*args, *overrides, env=job_env(**{FAULTS: fault}))
    else:
        proc = run_job_here(*args, *overrides)
    return Run(parent / name, proc.returncode, proc.stderr)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Run:
    run = train(tmp_path_factory.mktemp("reference"), "straight")
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def terminated(tmp_path_factory) -> Run:
    """A run that received SIGTERM after step 6 (checkpoints 4, by schedule, and 6, on SIGTERM)."""
    return train(tmp_path_factory.mktemp("terminated"), "spot", fault="sigterm@6")


def test_sigkill_then_the_same_command_resumes_and_finishes(tmp_path, uninterrupted):
    killed = train(tmp_path, "run", fault="sigkill@6")
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in training.complete_checkpoints(killed.checkpoints)] == ["checkpoint-4"]
    assert not rundir.is_complete(killed.dir)

    again = train(tmp_path, "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoint {killed.checkpoints / 'checkpoint-4'}" in again.stderr
    assert again.metrics["run"]["resumed_from"] == str(killed.checkpoints / "checkpoint-4")
    assert again.metrics["train"]["steps"] == uninterrupted.metrics["train"]["steps"] == 12
    assert "metrics: step=2 " not in again.stderr  # steps 1-4 were not trained again
    assert abs(again.metrics["train"]["eval_loss"] - uninterrupted.metrics["train"]["eval_loss"]) < LOSS_NOISE
    assert rundir.verify(again.dir) == []


def test_sigterm_saves_a_marked_checkpoint_and_exits_without_finishing(terminated):
    assert terminated.returncode == 143
    assert "SIGTERM received: saving a checkpoint after this step, then stopping" in terminated.stderr
    assert (
        f"error (interrupted): stopped by SIGTERM at step 6; checkpoint saved in {terminated.checkpoints}; run the same "
        f"command again (same output.run_name=spot) to resume" in terminated.stderr
    )
    assert "Traceback" not in terminated.stderr
    newest = training.complete_checkpoints(terminated.checkpoints)[0]
    assert newest.name == "checkpoint-6"
    marker = json.loads((newest / training.COMPLETE_MARKER).read_text())
    assert marker["step"] == 6 and len(marker["config_hash"]) == 16  # what a resume must match (tests/test_tune.py)
    assert training.checkpoint_loadable(newest)
    assert not rundir.is_complete(terminated.dir)


def test_a_corrupt_or_unmarked_checkpoint_is_never_loaded(terminated, tmp_path):
    copy = tmp_path / "checkpoints"
    shutil.copytree(terminated.checkpoints, copy)
    assert training.resume_point(copy) == copy / "checkpoint-6"

    half_written = copy / "checkpoint-8"  # a save cut short: files, no marker
    shutil.copytree(copy / "checkpoint-6", half_written)
    (half_written / training.COMPLETE_MARKER).unlink()
    assert training.resume_point(copy) == copy / "checkpoint-6"

    weights = copy / "checkpoint-6" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert training.resume_point(copy) == copy / "checkpoint-4"


def test_resume_from_a_folder_copied_in_from_elsewhere_skips_its_corrupt_newest(terminated, tmp_path, uninterrupted):
    """How Kaggle continues across sessions and SageMaker restores /opt/ml/checkpoints from S3: the checkpoints
    arrive in a folder of their own, under a run folder that does not exist yet."""
    copy = tmp_path / "restored"
    shutil.copytree(terminated.checkpoints, copy)
    weights = copy / "checkpoint-6" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated in transit

    run = train(tmp_path / "runs", "continued", f"train.checkpoint_dir={copy}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        f"checkpoint {copy / 'checkpoint-6'} is marked complete but cannot be read; trying an older one" in run.stderr
    )
    assert f"resuming from checkpoint {copy / 'checkpoint-4'}" in run.stderr
    # the best checkpoint was recorded under the old folder; best-model tracking follows the copy
    best = Path(
        json.loads((terminated.checkpoints / "checkpoint-4" / "trainer_state.json").read_text())[
            "best_model_checkpoint"
        ]
    )
    assert best.parent == terminated.checkpoints
    assert f"best checkpoint so far: {copy / best.name}" in run.stderr
    assert "recorded in the resumed state does not" not in run.stderr
    assert run.metrics["train"]["steps"] == 12
    assert abs(run.metrics["train"]["eval_loss"] - uninterrupted.metrics["train"]["eval_loss"]) < LOSS_NOISE
    assert rundir.verify(run.dir) == []
    assert not rundir.is_complete(terminated.dir)  # the interrupted run itself is left as it was
