"""The container engine and the image for the tests that run it (tests/test_container.py,
tests/test_sagemaker_container.py): found once, built once per session, registered as a pytest plugin by
tests/conftest.py. Settings: CONTAINER_BASE_IMAGE (default localhost/debian:bookworm), CONTAINER_TORCH_WHEELS (a
folder with a torch CPU wheel, default /opt/wheels), CONTAINER_IMAGE (test an image built beforehand instead of
building one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch import image
from tests.conftest import CONTAINER_TEST_FILES, SCORE_KEYS, once_per_test_run

ROOT = image.PROJECT_ROOT
PLANTED = "hf_PlantedContainerSecret7f3a9c2e41"
"""A token placed in the build's environment and build context, and passed to runs: it must never land in the
image, its history or a run folder."""
BASE_IMAGE = os.environ.get("CONTAINER_BASE_IMAGE", "localhost/debian:bookworm")
WHEELS = Path(os.environ.get("CONTAINER_TORCH_WHEELS", "/opt/wheels"))
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TAG = "localhost/dialogsum-qlora:container-test"


def container_engine() -> tuple[str | None, str]:
    """(engine, '') or (None, why the container tests skip)."""
    for engine in ("podman", "docker"):
        if image.engine_answers(engine):
            break
    else:
        return None, "no container engine answers (podman or a docker daemon): run container/ci-setup.sh"
    if subprocess.run([engine, "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        return None, f"base image {BASE_IMAGE} is missing: run container/ci-setup.sh"
    if not list(WHEELS.glob("torch-*.whl")):
        return None, f"no torch CPU wheel in {WHEELS} (set CONTAINER_TORCH_WHEELS)"
    return engine, ""


@pytest.fixture(scope="session")
def engine() -> str:
    found, why = container_engine()
    if not found:
        pytest.skip(why)
    return found


def run(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def copy_context(dest: Path) -> Path:
    """The project's build inputs plus planted secrets in places a careless context would ship them."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in ("container", "job", "launch"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / ".env").write_text(f"HF_TOKEN={PLANTED}\n")
    (dest / "job" / ".env").write_text(f"HF_TOKEN={PLANTED}\n")
    (dest / "job" / "hf_token").write_text(PLANTED)
    (dest / "container" / "hf_token").write_text(PLANTED)
    return dest


_early_build: threading.Thread | None = None


def _build_once(tmp_path_factory, engine: str) -> dict:
    return once_per_test_run(tmp_path_factory, "image", lambda folder: build_image(engine, copy_context(folder)))


def _wants_the_image(config: pytest.Config) -> bool:
    """Whether this run may need the image: not `-m "not container"`, and the whole suite, a folder or a container
    test file among the paths asked for."""
    if "not container" in (config.option.markexpr or ""):
        return False
    paths = [Path(a.split("::")[0]) for a in config.args] or [Path("tests")]
    return any(p.is_dir() or p.name in CONTAINER_TEST_FILES for p in paths)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start building the image as the run starts (in the process that runs pytest, or that hands the tests to the
    xdist workers), while the tests that need no image run; `built` waits for it. Made once, as `once_per_test_run`
    makes it, so a worker that gets there first waits on the same lock."""
    global _early_build
    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("CONTAINER_IMAGE") or not _wants_the_image(config):
        return
    engine, _ = container_engine()
    if engine is None:
        return
    factory = config._tmp_path_factory  # the run's own: the xdist workers' temporary folders lie under it

    def build() -> None:
        try:
            _build_once(factory, engine)
        except BaseException:  # recorded by once_per_test_run; `built` reports it in the tests that need the image
            pass

    _early_build = threading.Thread(target=build, name="image build", daemon=True)
    _early_build.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _early_build is not None:
        _early_build.join()  # never leave a half-built image behind


@pytest.fixture(scope="session")
def context(tmp_path_factory) -> Path:
    return copy_context(tmp_path_factory.mktemp("context"))


@pytest.fixture(scope="session")
def built(engine, tmp_path_factory) -> str:
    """The image, built once per test run (once for all xdist workers, started as the run starts) through `python -m
    launch image build`, with the token in the build's environment and planted in the build context."""
    if os.environ.get("CONTAINER_IMAGE"):
        return os.environ["CONTAINER_IMAGE"]
    return _build_once(tmp_path_factory, engine)["tag"]


def build_image(engine: str, context: Path) -> dict:
    wheel = sorted(WHEELS.glob("torch-*.whl"))[-1]
    torch_version = wheel.name.split("-")[1].split("+")[0]
    cmd = [sys.executable, "-m", "launch", "image", "build", "--engine", engine, "--tag", TAG]
    cmd += ["--context", str(context), "--base-image", BASE_IMAGE, "--build-arg", f"TORCH=torch=={torch_version}"]
    extra = ["--network", "host"]
    if engine == "podman":  # docker build cannot mount folders; it downloads torch instead
        cmd += ["--build-arg", f"PIP_FIND_LINKS={WHEELS}"]
        extra += ["-v", f"{WHEELS}:{WHEELS}:ro"]
        if HOST_CA.is_file():
            cmd += ["--build-arg", "PIP_CERT=/run/host-ca.crt"]
            extra += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro"]
    done = run(cmd + ["--"] + extra, timeout=1200, env={**os.environ, "HF_TOKEN": PLANTED}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == TAG
    return {"tag": TAG}


def opt_ml_tree(root: Path, hyperparameters: dict) -> Path:
    """What SageMaker mounts at /opt/ml for a training job with one `train` channel."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    channel = root / "input" / "data" / "train"
    channel.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        shutil.copy2(ROOT / "job" / "builtin" / f"{split}.jsonl", channel / f"{split}.jsonl")
    for folder in ("model", "output", "checkpoints"):
        (root / folder).mkdir()
    return root


def files_containing(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def assert_complete_run(run_dir: Path) -> dict:
    """A finished run folder: every file in the manifest as listed, and the metrics the job promises."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"versions", "seed", "started_at", "finished_at", "files"} <= set(manifest)
    listed = {f["path"] for f in manifest["files"]}
    assert {"metrics.json", "config.yaml", "predictions.jsonl", "report.md"} <= listed
    assert any(p.startswith("adapter/") for p in listed)
    for f in manifest["files"]:
        data = (run_dir / f["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"]), f["path"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"run", "scorer", "generation", "base", "finetuned", "baselines", "train"} <= set(metrics)
    for side in ("base", "finetuned"):
        assert SCORE_KEYS <= set(metrics[side]), side
    return metrics


def exit_code(engine: str, name: str) -> int:
    return int(run([engine, "inspect", name, "--format", "{{.State.ExitCode}}"]).stdout.strip())


def wait_for_log(engine: str, name: str, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = run([engine, "logs", name])
        logs = done.stdout + done.stderr
        if re.search(pattern, logs, re.MULTILINE):
            return logs
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} in the container's log within {timeout} s:\n{logs[-3000:]}")


@pytest.fixture
def container_name(engine, request):
    name = f"dsq-test-{request.node.name[:40].replace('_', '-')}-{os.getpid()}"
    yield name
    run([engine, "rm", "-f", name])
