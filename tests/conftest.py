"""Shared fixtures: one finished `test`-preset run per session, built through the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.container_fixtures"]  # the engine, the built image and their helpers, shared once
SCORE_KEYS = {
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "multi_reference",
    "first_reference",
    "ci95",
    "avg_words",
    "length_ratio",
    "hit_max_new_tokens",
}
"""The keys of each scored block (`base`, `finetuned`, a baseline) in metrics.json."""


def job_env(**extra: str) -> dict[str, str]:
    """The environment for a job subprocess: offline, no token, no platform variables leaking in from the host."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SM_", "HF_TOKEN", "KAGGLE_", "AWS_", "TRAINING_JOB"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_job(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m job ARGS` in a subprocess, capturing stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        capture_output=True,
        text=True,
        env=env or job_env(),
        cwd=cwd or REPO,
        timeout=timeout,
    )


@dataclass
class FinishedRun:
    dir: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> FinishedRun:
    """A complete run folder from `python -m job train --config test`, shared by every test that reads one."""
    parent = tmp_path_factory.mktemp("runs")
    proc = run_job("train", "--config", "test", f"output.uri={parent}", "output.run_name=shared")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return FinishedRun(dir=parent / "shared", stdout=proc.stdout, stderr=proc.stderr)
