"""`python -m launch docker`: the docker/podman command it prints, and runs with --run.

Printing needs no engine. For --run, the engine is faked at the process boundary (an executable named like the
engine, first on PATH, recording its arguments); tests/test_container.py runs the same command with real podman.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys

import pytest

from launch import docker

TOKEN = "hf_plantedTokenValue0123456789"

FAKE_ENGINE = """#!{python}
import json, os, sys
with open(os.environ["FAKE_ENGINE_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(0 if sys.argv[1] == "info" else 7)
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)


def launch(*args: str) -> tuple[int, list[str], str]:
    """Runs the launcher the way a user does; returns (exit code, the printed command as argv, stderr)."""
    done = subprocess.run([sys.executable, "-m", "launch", "docker", *args], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return done.returncode, shlex.split(lines[-1]) if lines else [], done.stderr


def flag_values(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_docker_gpu_command_with_mounts_user_and_token_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    runs, cache = tmp_path / "r", tmp_path / "c"
    code, cmd, err = launch(
        "train", "--config", "llama-3.2-3b-qlora", "--engine", "docker", "--image", "dsq:1",
        "--runs", str(runs), "--hf-cache", str(cache), "train.max_steps=5",
    )  # fmt: skip
    assert code == 0, err
    assert cmd[:5] == ["docker", "run", "--rm", "--gpus", "all"]
    assert flag_values(cmd, "--user") == [f"{os.getuid()}:{os.getgid()}"]
    assert flag_values(cmd, "-v") == [f"{runs}:/runs", f"{cache}:/cache/huggingface"]
    assert flag_values(cmd, "-e") == ["HF_TOKEN"]
    at = cmd.index("dsq:1")
    assert cmd[at:] == ["dsq:1", "train", "--config", "llama-3.2-3b-qlora", "train.max_steps=5", "output.uri=/runs"]
    assert TOKEN not in " ".join(cmd) + err
    assert not runs.exists(), "printing must not create folders"


def test_podman_uses_cdi_for_the_gpu_and_cpu_drops_it():
    _, cmd, _ = launch("train", "--config", "smoke", "--engine", "podman")
    assert cmd[:5] == ["podman", "run", "--rm", "--device", "nvidia.com/gpu=all"]
    _, cmd, _ = launch("train", "--config", "smoke", "--engine", "podman", "--cpu", "--as-root")
    assert "--device" not in cmd and "--gpus" not in cmd and "--user" not in cmd


def test_several_gpus_run_the_job_under_torchrun_one_process_each():
    _, cmd, err = launch("train", "--config", "llama-3.2-3b-qlora", "--engine", "docker", "--image", "dsq:1",
                         "--gpus", "4")  # fmt: skip
    assert flag_values(cmd, "--gpus") == ["4"] and flag_values(cmd, "--entrypoint") == ["/opt/venv/bin/python"]
    at = cmd.index("dsq:1")
    assert cmd[at + 1 : at + 8] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "job", "train",
    ]  # fmt: skip
    _, cmd, _ = launch("train", "--config", "smoke", "--engine", "podman", "--gpus", "2")
    assert flag_values(cmd, "--device") == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    _, cmd, _ = launch("train", "--config", "smoke", "--engine", "docker", "--gpus", "1")
    assert "--entrypoint" not in cmd  # one GPU: the image's own entrypoint, one process
    code, _, err = launch("train", "--config", "smoke", "--engine", "docker", "--gpus", "0")
    assert code == 2 and "--gpus takes `all` or a count >= 1" in err


def test_token_file_is_mounted_where_the_job_reads_it(tmp_path):
    token_file = tmp_path / "hf_token"
    token_file.write_text(TOKEN + "\n")
    code, cmd, err = launch("train", "--config", "smoke", "--engine", "docker", "--hf-token-file", str(token_file))
    assert code == 0, err
    assert f"{token_file}:/run/secrets/hf_token:ro" in flag_values(cmd, "-v")
    assert "-e" not in cmd and TOKEN not in " ".join(cmd)


def test_missing_token_file_is_one_line(tmp_path):
    code, cmd, err = launch("train", "--config", "smoke", "--engine", "docker", "--hf-token-file", "nope")
    assert (code, cmd) == (2, [])
    assert err.strip().splitlines() == ["error: --hf-token-file nope: no such file (write the token into it, one line)"]


def test_local_config_and_data_are_mounted_read_only_and_rewritten(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("method: qlora\ntrain:\n  max_steps: 3\n")
    data = tmp_path / "dialogues.jsonl"
    data.write_text('{"dialogue": "#Person1#: hi", "summary": "greeting"}\n')
    code, cmd, err = launch(
        "train", "--config", str(config), "--engine", "docker", "--data.dataset", str(data), "data.max_train_examples=4"
    )
    assert code == 0, err
    volumes = flag_values(cmd, "-v")
    assert f"{config}:/inputs/config/my.yaml:ro" in volumes and f"{data}:/inputs/data/dialogues.jsonl:ro" in volumes
    job = cmd[cmd.index("train") :]
    assert job == [
        "train", "--config", "/inputs/config/my.yaml", "--data.dataset", "/inputs/data/dialogues.jsonl",
        "data.max_train_examples=4", "output.uri=/runs",
    ]  # fmt: skip


def test_remote_output_keeps_its_local_copy_in_the_mounted_runs():
    _, cmd, _ = launch("train", "--config", "smoke", "--engine", "docker", "output.uri=s3://bucket/runs")
    assert cmd[-2:] == ["output.uri=s3://bucket/runs", "output.local_dir=/runs"]


def test_a_container_path_as_output_is_refused():
    code, cmd, err = launch("train", "--config", "smoke", "--engine", "docker", "output.uri=/data/runs")
    assert (code, cmd) == (2, [])
    assert "choose the folder on this machine with --runs" in err


def test_config_mistakes_stop_before_any_container(tmp_path):
    code, cmd, err = launch("train", "--config", "smoke", "--engine", "docker", "train.learning_rat=1", "--run")
    assert (code, cmd) == (2, [])
    assert "unknown key 'train.learning_rat'" in err


def test_run_executes_exactly_the_printed_command_and_returns_its_exit_code(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "podman"
    exe.write_text(FAKE_ENGINE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    code, printed, err = launch("train", "--config", "smoke", "--engine", "podman", "--runs", "out", "--run")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert code == 7, err
    assert calls == [["info"], printed[1:]]
    assert (tmp_path / "out").is_dir()
    assert TOKEN not in log.read_text()


def test_overrides_are_found_and_replaced_in_every_form_the_job_accepts():
    args = ["data.dataset=a", "--data.dataset", "b", "--data.dataset=c", "train.epochs=1"]
    assert docker.override_value(args, "data.dataset") == "c"
    assert docker.override_value(args[:3], "data.dataset") == "b"
    assert docker.replace_override(args, "data.dataset", "/x") == [
        "data.dataset=/x", "--data.dataset", "/x", "--data.dataset=/x", "train.epochs=1",
    ]  # fmt: skip


def test_serve_mounts_a_run_folder_at_opt_ml_model_and_publishes_8080_on_localhost(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text("{}")
    code, cmd, err = launch("serve", str(run_dir), "--engine", "docker", "--image", "dsq:1", "--batch-size", "8")
    assert code == 0, err
    assert cmd[:7] == ["docker", "run", "--rm", "--gpus", "all", "-p", "127.0.0.1:8080:8080"]
    assert f"{run_dir}:/opt/ml/model:ro" in flag_values(cmd, "-v")
    assert flag_values(cmd, "-e") == ["HF_TOKEN"]
    assert cmd[cmd.index("dsq:1") :] == ["dsq:1", "serve", "--batch-size", "8"]
    assert TOKEN not in " ".join(cmd) + err


def test_serve_passes_a_remote_run_on_with_aws_credentials_by_name(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret")
    code, cmd, err = launch("serve", "s3://b/runs/r1", "--engine", "podman", "--cpu", "--port", "9000")
    assert code == 0, err
    assert flag_values(cmd, "-p") == ["127.0.0.1:9000:8080"]
    assert flag_values(cmd, "-e") == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert cmd[-3:] == ["serve", "--run", "s3://b/runs/r1"]
    assert "planted-secret" not in " ".join(cmd)


def test_serve_without_a_finished_run_is_one_line(tmp_path):
    code, cmd, err = launch("serve", str(tmp_path), "--engine", "docker")
    assert code == 2 and cmd == []
    assert err.strip() == (
        f"error: {tmp_path} is not a finished run folder (no manifest.json); pass the folder of a finished run"
    )
    code, _, err = launch("serve", "--engine", "docker")
    assert code == 2 and "serve needs the run: python -m launch docker serve RUN" in err
