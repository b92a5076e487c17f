"""`python -m launch image build|push`: the engine's build command, and the push to ECR against moto.

The container engine is the one thing with no local stand-in for a registry push, so it is faked at the process
boundary: an executable named like the engine, first on PATH, that records its arguments and stdin. ECR itself is
moto's (repository creation, authorization token), called through the real boto3 client.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import boto3
import pytest
from moto import mock_aws

from launch import image

REGION = "eu-west-1"

FAKE_ENGINE = """#!{python}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if "--password-stdin" in args else None
with open(os.environ["FAKE_ENGINE_LOG"], "a") as f:
    f.write(json.dumps({{"engine": os.path.basename(sys.argv[0]), "args": args, "stdin": stdin}}) + "\\n")
sys.exit(int(os.environ.get("FAKE_ENGINE_EXIT_" + args[0].upper(), "0")))
"""


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    """Fake `docker` and `podman` executables first on PATH; returns a function reading their recorded calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in image.ENGINES:
        exe = bin_dir / name
        exe.write_text(FAKE_ENGINE.format(python=sys.executable))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "engine-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


@pytest.fixture
def aws(monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("ecr", region_name=REGION)


def ecr_password(ecr) -> str:
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    return base64.b64decode(token).decode().split(":", 1)[1]


def test_push_creates_the_repository_logs_in_on_stdin_and_prints_the_uri(aws, fake_engine, capsys):
    assert image.main(["push", "--engine", "podman", "--tag", "dialogsum-qlora:1.2.3", "--region", REGION]) == 0

    repo = aws.describe_repositories(repositoryNames=["dialogsum-qlora"])["repositories"][0]
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    uri = f"{repo['repositoryUri']}:1.2.3"
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == uri
    assert uri.startswith(f"123456789012.dkr.ecr.{REGION}.amazonaws.com/dialogsum-qlora:")

    calls = [c["args"] for c in fake_engine()]
    registry = uri.split("/", 1)[0]
    assert calls == [
        ["info"],
        ["login", "--username", "AWS", "--password-stdin", registry],
        ["tag", "dialogsum-qlora:1.2.3", uri],
        ["push", uri],
    ]
    login = fake_engine()[1]
    assert login["stdin"] == ecr_password(aws)
    assert all(login["stdin"] not in arg for call in calls for arg in call)


def test_push_reuses_an_existing_repository(aws, fake_engine, capsys):
    aws.create_repository(repositoryName="team/dialogsum", imageTagMutability="IMMUTABLE")
    args = ["push", "--engine", "docker", "--tag", "localhost/dialogsum-qlora:abc", "--repository", "team/dialogsum"]
    assert image.main(args) == 0

    repos = aws.describe_repositories()["repositories"]
    assert [r["repositoryName"] for r in repos] == ["team/dialogsum"]
    assert repos[0]["imageTagMutability"] == "IMMUTABLE"
    assert capsys.readouterr().out.strip().endswith("/team/dialogsum:abc")
    assert [c["engine"] for c in fake_engine()] == ["docker"] * 4


def test_push_reports_a_failed_engine_push_in_one_line(aws, fake_engine, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ENGINE_EXIT_PUSH", "1")
    assert image.main(["push", "--engine", "docker", "--tag", "dialogsum-qlora:1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: `docker push` failed with exit code 1 (its output is above)"]


def test_push_without_aws_credentials_says_how_to_fix(fake_engine, monkeypatch, tmp_path, capsys):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # forget credentials an earlier test's session resolved
    assert image.main(["push", "--engine", "docker", "--region", REGION]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ECR: Unable to locate credentials") and "aws sts get-caller-identity" in err
    assert [c["args"] for c in fake_engine()] == [["info"]]


def test_build_runs_the_engine_with_a_sagemaker_compatible_manifest(fake_engine, capsys):
    args = ["build", "--engine", "podman", "--tag", "dsq:t", "--base-image", "localhost/debian:bookworm"]
    args += ["--build-arg", "TORCH=torch==2.13.0", "--", "--network", "host"]
    assert image.main(args) == 0
    assert capsys.readouterr().out.strip() == "dsq:t"
    root = str(image.PROJECT_ROOT)
    assert fake_engine()[-1]["args"] == [
        "build",
        "-f",
        f"{root}/Dockerfile",
        "-t",
        "dsq:t",
        "--platform",
        "linux/amd64",
        "--format",
        "docker",
        "--build-arg",
        "TORCH=torch==2.13.0",
        "--build-arg",
        "BASE_IMAGE=localhost/debian:bookworm",
        "--network",
        "host",
        root,
    ]


def test_docker_build_turns_off_provenance_so_sagemaker_accepts_the_manifest():
    cmd = image.build_command("docker", "dsq:1")
    assert "--provenance=false" in cmd and cmd[cmd.index("--output") + 1] == "type=docker"
    assert "--format" not in cmd and cmd[-1] == str(image.PROJECT_ROOT)


@pytest.mark.parametrize("name", ["HF_TOKEN", "aws_secret_access_key", "GITHUB_API_KEY", "DB_PASSWORD"])
def test_build_refuses_secret_build_args(name, fake_engine, capsys):
    assert image.main(["build", "--engine", "docker", "--build-arg", f"{name}=planted-value-123"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --build-arg {name} looks like a secret") and "history" in err
    assert "planted-value-123" not in err
    assert [c["args"][0] for c in fake_engine()] == ["info"]


def test_build_without_a_dockerfile_names_the_folder(tmp_path, fake_engine, capsys):
    assert image.main(["build", "--engine", "docker", "--context", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"error: no Dockerfile in {tmp_path}: run from the project checkout or pass --context"
    )


def test_a_docker_cli_without_a_daemon_is_not_an_engine(fake_engine, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_EXIT_INFO", "1")
    assert not image.engine_answers("docker")
    with pytest.raises(image.ImageError, match="docker is not installed or cannot run containers"):
        image.choose_engine("docker")
    assert image.choose_engine(must_work=False) == "docker"
    monkeypatch.setenv("FAKE_ENGINE_EXIT_INFO", "0")
    assert image.choose_engine() == "docker"


def test_the_launchers_import_no_torch():
    code = (
        "import sys, launch.image, launch.docker\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'peft'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=image.PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
