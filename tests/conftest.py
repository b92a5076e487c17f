"""Shared fixtures and helpers: the job's command line in a subprocess (`run_job`) or through its `main` in this process
(`run_job_here`), one finished `test`-preset run shared by every worker, and the order xdist hands the files out in."""

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


def run_job_here(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m job ARGS` as `job.cli.main(ARGS)` in this process: `run_here`."""
    from job import cli

    return run_here("job", cli.main, *args, env=env)


def run_here(
    module: str, main: Callable[[list[str]], int], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` as `main(ARGS)` in this process, as TRL's test_cli does: the same command line,
    environment (exactly `env`, default `job_env()`) and working folder (REPO), stdout and stderr captured, without
    an interpreter start and the torch import (~7 s of each job process on two cores). For the runs whose point is
    not the process itself: signals, PID 1 and torchrun need `run_job`. huggingface_hub reads its settings
    (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME and the token file under it) when it is imported: its `constants` module is
    read again under the run's environment, so a run against a stand-in Hub sees the same settings as in a new
    process.

    Everything a run leaves in the process is put back afterwards: the environment (the job exports HF_TOKEN),
    huggingface_hub's settings, registered secrets, signal handlers, log handlers, the watchdog, the working folder,
    and boto3's default session (it keeps the credentials it resolved first)."""
    import contextlib
    import importlib
    import io
    import signal
    import traceback

    import boto3
    from huggingface_hub import constants as hub_settings

    from job import logs, watchdog

    env = env or job_env()
    saved_env, saved_cwd, saved_boto = dict(os.environ), os.getcwd(), boto3.DEFAULT_SESSION
    boto3.DEFAULT_SESSION = None
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    saved_secrets = set(logs._SECRETS)
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    importlib.reload(hub_settings)
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        watchdog.stop()
        for handler in [h for h in root.handlers if h not in saved_handlers]:
            root.removeHandler(handler)  # the job's (or logging.basicConfig's), bound to this run's stderr
        os.environ.clear()
        os.environ.update(saved_env)
        importlib.reload(hub_settings)
        os.chdir(saved_cwd)
        boto3.DEFAULT_SESSION = saved_boto
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        logs._SECRETS.clear()
        logs._SECRETS.update(saved_secrets)
    return subprocess.CompletedProcess(["python", "-m", module, *args], code, out.getvalue(), err.getvalue())


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
        proc = run_job_here("train", "--config", "test", f"output.uri={parent}", "output.run_name=shared")
        assert proc.returncode == 0, proc.stderr[-4000:]
        return {"dir": str(parent / "shared"), "stdout": proc.stdout, "stderr": proc.stderr}

    made = once_per_test_run(tmp_path_factory, "trained_run", train)
    return FinishedRun(dir=Path(made["dir"]), stdout=made["stdout"], stderr=made["stderr"])


CONTAINER_TEST_FILES = ("test_container.py", "test_sagemaker_container.py", "test_serve_container.py")


def _unit(nodeid: str) -> str:
    """What one xdist worker runs as a whole: a file (its module fixtures, such as the trained runs of
    test_methods.py, are then made once, on one worker), except a container test file, whose tests share only the
    image and so spread over both workers one by one."""
    file = nodeid.split("::", 1)[0]
    return nodeid if Path(file).name in CONTAINER_TEST_FILES else file


def pytest_collection_modifyitems(config, items) -> None:
    """The order the units start in: the slow ones first, then the slow and the other container tests (by then the
    image, whose build starts with the run, is more likely ready), then the rest, which fill in at the end so that
    both workers finish together. Within a unit the order is the file's. Every worker sorts the same way, as xdist
    requires."""
    rank = {}
    for item in items:
        slow, container = item.get_closest_marker("slow"), item.get_closest_marker("container")
        unit = _unit(item.nodeid)
        rank[unit] = min(rank.get(unit, 3), 2 if container and not slow else 1 if container else 0 if slow else 3)
    items.sort(key=lambda item: rank[_unit(item.nodeid)])  # stable: collection order within a rank


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which plain `pytest` runs without
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs `pytest -n 2 --dist loadfile`: xdist's file-by-file scheduling, with the container test
    files split test by test (`_unit`) and the units handed out in collection order (the order above), not by their
    number of tests. Other `--dist` modes are left to xdist."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False
    return ByUnit(config, log)


class _UniquePaths(list):
    """A loader's search paths, to which boto3 appends its own data folder once per session: kept once."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


@pytest.fixture(autouse=True, scope="session")
def _botocore_reads_its_data_once():
    """botocore parses its JSON data (service models, endpoints) once per session object, and the launcher, the
    SageMaker SDK and moto each make sessions for every command: in one test process the same files were parsed
    hundreds of times, a third of test_sagemaker_checks' time. Every session of the worker gets one loader, as the
    sessions of one long-lived process would share one: the same files, each parsed once."""
    import botocore.loaders
    import botocore.session

    loader = botocore.loaders.create_loader()
    loader._search_paths = _UniquePaths(loader.search_paths)

    def register(session: botocore.session.Session) -> None:
        session._components.register_component("data_loader", loader)

    original = botocore.session.Session._register_data_loader
    botocore.session.Session._register_data_loader = register
    yield
    botocore.session.Session._register_data_loader = original


@pytest.fixture(autouse=True)
def _nothing_left_behind_for_the_next_test():
    """What one test leaves in the worker, put back after it: the job's log handler on the root logger, at INFO (the
    next test's captured stderr would hold other libraries' INFO lines), and boto3's default session (it keeps the
    credentials it resolved first, which a test of missing credentials would then find)."""
    root = logging.getLogger()
    level = root.level
    boto3 = sys.modules.get("boto3")
    session = boto3.DEFAULT_SESSION if boto3 else None
    yield
    if boto3 := sys.modules.get("boto3"):
        boto3.DEFAULT_SESSION = session
    for handler in [h for h in root.handlers if getattr(h, "_job_handler", False)]:
        root.removeHandler(handler)
    root.setLevel(level)
