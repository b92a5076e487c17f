"""The job's container image: its Dockerfile and pins, then the image built and run with a real engine.

The tests marked `container` build the Dockerfile on a locally made Debian base (no registry is reachable in CI)
with the CPU torch wheel found in a wheel folder, once per session, and run it the ways users and SageMaker do.
They need podman (or a docker daemon) and the base image: `container/ci-setup.sh` provides both, and without
them the tests skip, saying which is missing. Settings: CONTAINER_BASE_IMAGE (default localhost/debian:bookworm),
CONTAINER_TORCH_WHEELS (a folder with a torch CPU wheel, default /opt/wheels), CONTAINER_IMAGE (test an image
built beforehand instead of building one; the planted-secret check then covers only the run folders).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.container_fixtures import (
    BASE_IMAGE,
    PLANTED,
    ROOT,
    WHEELS,
    assert_complete_run,
    exit_code,
    files_containing,
    opt_ml_tree,
    run,
    wait_for_log,
)

# ----------------------------------------------------------------------------------------------
# The Dockerfile and its pins (no engine needed)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint is missing: pip install -e '.[dev]'"
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_every_hadolint_exception_is_justified():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], f"line {i + 1}"


def test_container_requirements_pin_the_job_extra_without_torch():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(r.name): r for r in map(Requirement, project["optional-dependencies"]["job"])}
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    pins = {}
    for line in (ROOT / "container" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    assert "torch" not in pins, "torch comes from the base image and must not be pinned"
    missing = sorted(set(wanted) - set(pins) - {"torch"})
    assert not missing, f"container/requirements.txt lacks {missing} from pyproject's job extra"
    extra = sorted(set(pins) - set(wanted) - base)
    assert not extra, f"container/requirements.txt pins {extra}, which pyproject does not list"
    for name, version in pins.items():
        if name in wanted:
            assert wanted[name].specifier.contains(version), f"{name}=={version} is outside {wanted[name]}"


def test_the_entrypoint_runs_the_job_package_and_exits_143_on_sigterm(tmp_path):
    """A stand-in `job` package, first on the path, that signals itself: the entrypoint must run it with its
    arguments and turn SIGTERM into exit code 143 (Python's default would die by the signal, -15 here). The
    `container` tests check the same as PID 1, where without the handler the signal is ignored."""
    stand_in = tmp_path / "job"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("")
    (stand_in / "__main__.py").write_text(
        "import os, signal, sys, time\n"
        "print('args', sys.argv[1:], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
        "print('still running')\n"
    )
    entrypoint = ROOT / "container" / "entrypoint.py"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(entrypoint), "train", "--config", "smoke"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 143, done.stderr
    assert done.stdout.splitlines() == ["args ['train', '--config', 'smoke']"]
    assert time.monotonic() - started < 20


def test_the_job_exits_143_on_sigterm_during_start_up_without_the_entrypoint():
    """`python -m job` itself (the DLC's command, a plain `docker run ... python -m job`): a stop while it is still
    importing ends it at once with 143, not by the signal (-15) and not after the run."""
    from tests.conftest import job_env

    proc = subprocess.Popen(
        [sys.executable, "-m", "job", "train", "--config", "smoke"], env=job_env(), cwd=ROOT, stderr=subprocess.PIPE
    )
    time.sleep(1.0)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143


# ----------------------------------------------------------------------------------------------
# The image, built and run


@pytest.mark.container
def test_build_context_holds_only_what_the_image_needs(engine, context):
    """The same .dockerignore, with a Dockerfile that copies the whole context: no planted file gets through."""
    dockerfile = context.parent / "Dockerfile.context"
    dockerfile.write_text(f"FROM {BASE_IMAGE}\nCOPY . /ctx\n")
    tag = "localhost/dialogsum-qlora:context-test"
    done = run([engine, "build", "-f", str(dockerfile), "-t", tag, str(context)])
    assert done.returncode == 0, done.stderr
    try:
        listing = run([engine, "run", "--rm", "--entrypoint", "find", tag, "/ctx", "-type", "f"]).stdout.split()
    finally:
        run([engine, "rmi", "-f", tag])
    shipped = {p.removeprefix("/ctx/") for p in listing}
    assert {"Dockerfile", "pyproject.toml", "container/entrypoint.py", "job/cli.py", "launch/cli.py"} <= shipped
    assert not [p for p in shipped if p.endswith((".env", "hf_token")) or "__pycache__" in p]
    assert not [
        p for p in shipped if p.split("/")[0] not in ("Dockerfile", "pyproject.toml", "container", "job", "launch")
    ]


@pytest.mark.container
def test_image_runs_python_m_job_as_root_keeps_torch_and_ships_no_build_leftovers(engine, built):
    config = json.loads(run([engine, "image", "inspect", built]).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/opt/venv/bin/python", "/opt/dialogsum/entrypoint.py"]
    assert config.get("User", "") in ("", "root", "0")
    assert {"PYTHONUNBUFFERED=1", "HF_HOME=/cache/huggingface"} <= set(config["Env"])
    probe = (
        "test ! -e /root/.cache/pip && test ! -e /src && ! command -v gcc && ! command -v cc "
        '&& test -z "$(ls /var/lib/apt/lists 2>/dev/null | grep -v lock)" '
        "&& python -c 'import torch, bitsandbytes, peft, transformers; print(torch.__version__)'"
    )
    done = run([engine, "run", "--rm", "--entrypoint", "/bin/sh", built, "-c", probe])
    assert done.returncode == 0, done.stdout + done.stderr
    wheel = sorted(WHEELS.glob("torch-*.whl"))[-1].name
    assert done.stdout.strip().splitlines()[-1] == wheel.split("-")[1], "the image replaced the base's torch"
    help_text = run([engine, "run", "--rm", built]).stdout
    assert "usage: python -m job COMMAND" in help_text


@pytest.mark.container
def test_a_run_through_launch_docker_lands_on_the_host(engine, built, tmp_path):
    """`python -m launch docker train ... --run` end to end (the `test` preset: every stage, in seconds)."""
    runs, cache = tmp_path / "runs", tmp_path / "hf-cache"
    cmd = [sys.executable, "-m", "launch", "docker", "train", "--config", "test", "--cpu", "--run"]
    cmd += ["--engine", engine, "--image", built, "--runs", str(runs), "--hf-cache", str(cache)]
    cmd += ["output.run_name=docker"]
    done = run(cmd, timeout=900, env={**os.environ, "HF_TOKEN": PLANTED}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    printed, *_, last = done.stdout.strip().splitlines()
    assert "-e HF_TOKEN " in printed and PLANTED not in printed
    assert last == "/runs/docker"
    metrics = assert_complete_run(runs / "docker")
    assert metrics["finetuned"]["rouge1"] > metrics["base"]["rouge1"]
    assert "metrics: step=" in done.stderr + done.stdout
    assert files_containing(runs, PLANTED) == []


@pytest.mark.container
def test_runs_as_an_ordinary_user(engine, built, tmp_path):
    """`--user` for local runs (docs/container.md): the job must need no root-only folder."""
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)
    cmd = [engine, "run", "--rm", "--user", "1234:1234", "-v", f"{runs}:/runs", built]
    done = run(cmd + ["train", "--config", "test", "output.uri=/runs", "output.run_name=user"], timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_complete_run(runs / "user")
    assert (runs / "user" / "manifest.json").stat().st_uid == 1234


@pytest.mark.container
def test_runs_as_sagemaker_does(engine, built, tmp_path):
    opt_ml = opt_ml_tree(tmp_path / "opt_ml", {"config": "test", "data.dataset": "channel:train"})
    cmd = [engine, "run", "--rm", "-e", "TRAINING_JOB_NAME=dsq-sm-test", "-v", f"{opt_ml}:/opt/ml", built, "train"]
    done = run(cmd, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = opt_ml / "model" / "dsq-sm-test"
    assert done.stdout.strip().splitlines()[-1] == "/opt/ml/model/dsq-sm-test"
    assert_complete_run(run_dir)
    resolved = (run_dir / "config.yaml").read_text()
    assert "dataset: channel:train" in resolved and "max_steps: 12" in resolved
    assert not (opt_ml / "output" / "failure").exists()


@pytest.mark.container
def test_runs_the_config_that_launch_sagemaker_sends(engine, built, tmp_path):
    """`python -m launch sagemaker --image URI` sends the resolved config as dotted-key hyperparameters, with no
    preset name: the image must rebuild exactly that config from them."""
    from job import config as config_mod
    from launch.sagemaker.request import hyperparameters_for

    cfg = config_mod.resolve("test", ["data.dataset=channel:train", "train.max_steps=4", "eval.base=false"], {})
    opt_ml = opt_ml_tree(tmp_path / "opt_ml", hyperparameters_for(cfg))
    cmd = [engine, "run", "--rm", "-e", "TRAINING_JOB_NAME=dsq-sm-hps", "-v", f"{opt_ml}:/opt/ml", built, "train"]
    done = run(cmd, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    manifest = json.loads((opt_ml / "model" / "dsq-sm-hps" / "manifest.json").read_text())
    assert manifest["config_hash"] == cfg.hash()


@pytest.mark.container
def test_bad_config_on_sagemaker_writes_the_failure_reason(engine, built, tmp_path):
    opt_ml = opt_ml_tree(tmp_path / "opt_ml", {"config": "test", "train.learning_rat": "0.1"})
    cmd = [engine, "run", "--rm", "-e", "TRAINING_JOB_NAME=dsq-sm-bad", "-v", f"{opt_ml}:/opt/ml", built, "train"]
    done = run(cmd, timeout=300)
    assert done.returncode == 2, done.stderr[-4000:]
    reason = (opt_ml / "output" / "failure").read_text()
    assert reason.startswith("config:") and "train.learning_rat" in reason and len(reason) <= 1024
    assert not any((opt_ml / "model").iterdir())


@pytest.mark.container
def test_stop_during_start_up_exits_at_once(engine, built, container_name):
    """PID 1 ignores SIGTERM unless it handles it: without the entrypoint's handler this waits out the 30 s.
    The stop comes while Python is still importing, before the job installs its own handler for training."""
    assert run([engine, "run", "-d", "--name", container_name, built, "train", "--config", "smoke"]).returncode == 0
    time.sleep(0.5)
    state = run([engine, "inspect", container_name, "--format", "{{.State.Running}}"]).stdout.strip()
    assert state == "true", run([engine, "logs", container_name]).stderr[-2000:]
    started = time.monotonic()
    run([engine, "stop", "-t", "30", container_name])
    assert time.monotonic() - started < 15
    assert exit_code(engine, container_name) == 143


@pytest.mark.container
def test_stop_during_training_leaves_a_checkpoint(engine, built, container_name, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cmd = [engine, "run", "-d", "--name", container_name, "-v", f"{runs}:/runs", built, "train", "--config", "test"]
    # Many steps and no scheduled save before step 400: the stop lands mid-training, and only the job's SIGTERM
    # handling can have written a checkpoint.
    cmd += ["train.max_steps=500", "train.eval_steps=400", "train.save_steps=400"]
    assert run(cmd + ["output.uri=/runs", "output.run_name=stopped"]).returncode == 0
    wait_for_log(engine, container_name, r"^.*metrics: step=", timeout=300)
    started = time.monotonic()
    run([engine, "stop", "-t", "90", container_name], timeout=120)
    assert time.monotonic() - started < 80, "the job did not stop on SIGTERM before the engine's SIGKILL"
    assert exit_code(engine, container_name) not in (0, 137)
    assert "SIGTERM" in wait_for_log(engine, container_name, "SIGTERM", timeout=5)
    checkpoints = sorted((runs / "stopped" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, f"no checkpoint in {runs / 'stopped'}: {sorted(p.name for p in (runs / 'stopped').iterdir())}"
    assert (checkpoints[-1] / "adapter_model.safetensors").is_file()
    assert not (runs / "stopped" / "manifest.json").exists()


@pytest.mark.container
def test_image_and_history_hold_no_secret(engine, built):
    history = run([engine, "history", "--no-trunc", built])
    inspect = run([engine, "image", "inspect", built])
    assert history.returncode == inspect.returncode == 0
    assert "/opt/dialogsum/entrypoint.py" in history.stdout + inspect.stdout
    assert PLANTED not in history.stdout + inspect.stdout

    needle, marker = PLANTED.encode(), b"runpy.run_module"  # the marker proves the scan reads the files' bytes
    hits, marker_seen, tail = 0, False, b""
    with subprocess.Popen([engine, "save", built], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as save:
        while chunk := save.stdout.read(8 << 20):
            window = tail + chunk
            hits += window.count(needle)
            marker_seen = marker_seen or marker in window
            tail = window[-(len(needle) - 1) :]
    assert save.returncode == 0
    assert marker_seen
    assert hits == 0
