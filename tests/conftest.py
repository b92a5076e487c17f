"""Shared fixtures: one finished `test`-preset run per session, built through the real CLI in a subprocess."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one torch thread each (and in the jobs they start) instead of two threads fighting for
    # each core. Set before anything imports torch; the container test that compares with a host run passes it on.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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


def once_per_test_run(tmp_path_factory, name: str, make: Callable[[Path], dict]) -> dict:
    """`make(folder)` once for the whole test run, also when pytest-xdist spreads the files over several workers: the
    first worker to get here makes it under a lock in the run's shared temporary folder, the others wait and read
    what it returned (JSON). A failure is kept too, so every worker fails with the same message instead of
    retrying."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's basetemp is a sibling folder of the others'
    result = root / f"{name}.json"
    with FileLock(str(result) + ".lock"):
        if not result.is_file():
            folder = root / name
            folder.mkdir(exist_ok=True)
            try:
                value = {"ok": make(folder)}
            except BaseException as e:  # recorded for the other workers, then raised here
                result.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
                raise
            result.write_text(json.dumps(value))
        value = json.loads(result.read_text())
    if "error" in value:
        pytest.fail(f"{name} could not be made (in another worker): {value['error'][-4000:]}")
    return value["ok"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> FinishedRun:
    """A complete run folder from `python -m job train --config test`, made once and shared by every test that reads
    one (in every xdist worker). Tests read it and never write into it."""

    def train(parent: Path) -> dict:
        proc = run_job("train", "--config", "test", f"output.uri={parent}", "output.run_name=shared")
        assert proc.returncode == 0, proc.stderr[-4000:]
        return {"dir": str(parent / "shared"), "stdout": proc.stdout, "stderr": proc.stderr}

    made = once_per_test_run(tmp_path_factory, "trained_run", train)
    return FinishedRun(dir=Path(made["dir"]), stdout=made["stdout"], stderr=made["stderr"])


CONTAINER_TEST_FILES = ("test_container.py", "test_sagemaker_container.py", "test_serve_container.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    """`make test` runs under `pytest -n 2 --dist loadgroup`: each file is one group (its module fixtures, such as
    the trained runs of test_methods.py, are made once, on one worker), except the container tests, which share only
    the image and so spread over both workers."""
    for item in items:
        if item.path.name not in CONTAINER_TEST_FILES:
            item.add_marker(pytest.mark.xdist_group(item.path.name))


@pytest.fixture(autouse=True)
def _no_job_log_handler_left_behind():
    """A test that runs the job in-process leaves the job's log handler on the root logger, at INFO: the next test's
    captured stderr would then hold other libraries' INFO lines. Taken off after each test."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if getattr(h, "_job_handler", False)]:
        root.removeHandler(handler)
    root.setLevel(level)
