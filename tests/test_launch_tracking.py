"""`--mlflow` in the launchers: the request of each platform carries the tracking URI and never a credential.

SageMaker: the dry run's CreateTrainingJob request (checked against botocore's service model by the dry run itself)
has MLFLOW_TRACKING_URI in its Environment, and for an http(s) server the id of the Secrets Manager secret holding
the credential, never the credential. Kaggle: the kernel's settings hold the URI and the kernel hands it to the job;
the credential is a Kaggle secret the job reads. docker: `-e MLFLOW_TRACKING_URI=...` and the credential's name only.
No network: the dry runs call nothing."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest

from launch import docker
from launch.kaggle import cli as kaggle
from launch.kaggle import kernel
from launch.sagemaker import cli as sm_cli

ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team"
APP_ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-app/app-ABC123"
SERVER = "https://mlflow.example.com"
PLANTED = {
    "MLFLOW_TRACKING_TOKEN": "mlflow-PLANTED-token-0123456789",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-PLANTED-password-0123",
}


@pytest.fixture(autouse=True)
def planted(monkeypatch, tmp_path):
    """Credentials in the launching shell, which no request may carry; no AWS or Kaggle configuration."""
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)


def no_credential(*texts: str) -> None:
    for text in texts:
        for value in PLANTED.values():
            assert value not in text


def sagemaker_dry_run(capsys, *extra: str) -> tuple[dict, str]:
    argv = ["--config", "test", "--instance", "ml.g5.xlarge", "--region", "us-east-1", "--dry-run", *extra]
    assert sm_cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_sagemaker_passes_an_mlflow_arn_and_names_the_roles_actions(capsys):
    request, notes = sagemaker_dry_run(capsys, "--mlflow", ARN)
    assert request["Environment"] == {"MLFLOW_TRACKING_URI": ARN}
    assert "MlflowConfig" not in request  # the job tracks itself, named after its run folder (docs/tracking.md)
    shown = notes[notes.index("needs these permissions") :]
    policy = json.loads(shown[shown.index("{") : shown.index("\n}") + 2])
    tracking = policy["Statement"][0]
    assert tracking["Resource"] == ARN
    assert {"sagemaker-mlflow:CreateRun", "sagemaker-mlflow:LogBatch", "sagemaker-mlflow:SearchRuns"} <= set(
        tracking["Action"]
    )
    assert "s3:PutObject" in policy["Statement"][1]["Action"]  # artifacts go straight to the artifact store
    no_credential(json.dumps(request), notes)

    request, notes = sagemaker_dry_run(capsys, "--mlflow", APP_ARN)
    assert request["Environment"] == {"MLFLOW_TRACKING_URI": APP_ARN}
    assert "sagemaker:CallMlflowAppApi" in notes


def test_sagemaker_sends_an_http_servers_credential_through_secrets_manager(capsys):
    request, notes = sagemaker_dry_run(
        capsys, "--mlflow", SERVER, "--mlflow-secret", "team/mlflow", "--hf-token-secret", "team/hf"
    )
    env = request["Environment"]
    assert env["MLFLOW_TRACKING_URI"] == SERVER and env["MLFLOW_TRACKING_SECRET_ID"] == "team/mlflow"
    assert env["HF_TOKEN_SECRET_ID"].startswith("arn:aws:secretsmanager:us-east-1:")
    assert "secretsmanager:GetSecretValue" in notes
    no_credential(json.dumps(request), notes)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mlflow", "mlflow.example.com"], "--mlflow: 'mlflow.example.com' is not a tracking URI"),
        (["--mlflow", "sqlite:///m.db"], "a local store on this machine is out of the job's reach"),
        (["--mlflow", "https://a:b@mlflow.example.com"], "--mlflow: https://***@mlflow.example.com carries a password"),
        (["--mlflow-secret", "team/mlflow"], "--mlflow-secret holds the tracking server's credential: give --mlflow"),
        (["--mlflow", ARN, "--mlflow-secret", "x"], "signs its calls with the job's role; leave the secret out"),
    ],
)
def test_sagemaker_bad_tracking_options_are_one_line(capsys, extra, message):
    argv = ["--config", "test", "--instance", "ml.g5.xlarge", "--region", "us-east-1", "--dry-run", *extra]
    assert sm_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_sagemaker_refuses_a_credential_in_the_config(capsys):
    argv = ["--config", "test", "--instance", "ml.g5.xlarge", "--region", "us-east-1", "--dry-run"]
    assert sm_cli.main([*argv, f"data.system_prompt=key {PLANTED['MLFLOW_TRACKING_TOKEN']}"]) == 1
    err = capsys.readouterr().err
    assert "would contain your MLflow credential" in err
    no_credential(err)


def test_kaggle_kernel_settings_carry_the_uri_and_the_job_gets_it(capsys, tmp_path):
    argv = ["--config", "test", "--kernel", "alice/dialogsum-test", "--dry-run", "--folder", "k", "--mlflow", SERVER]
    assert kaggle.main(argv) == 0
    out = capsys.readouterr()
    assert "Kaggle secrets MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME or MLFLOW_TRACKING_PASSWORD" in out.out
    code = Path("k/dialogsum_kernel.py").read_text()
    (settings,) = [
        ast.literal_eval(n.value)
        for n in ast.parse(code).body
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "SETTINGS"
    ]
    assert settings["mlflow"] == SERVER
    meta = Path("k/kernel-metadata.json").read_text()
    no_credential(code, meta, out.out, out.err)
    env = kernel.job_environment(tmp_path / "src", settings, token=None)
    assert env["MLFLOW_TRACKING_URI"] == SERVER
    assert "MLFLOW_TRACKING_URI" not in kernel.job_environment(tmp_path / "src", {}, token=None)


def test_docker_passes_the_uri_and_the_credential_by_name(capsys):
    assert docker.main(["train", "--config", "test", "--engine", "docker", "--image", "dsq:1", "--mlflow", SERVER]) == 0
    out = capsys.readouterr()
    cmd = shlex.split(out.out.strip().splitlines()[-1])
    env = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-e"]
    assert env == [
        f"MLFLOW_TRACKING_URI={SERVER}",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ]
    assert cmd.index("-e") < cmd.index("dsq:1")
    no_credential(out.out, out.err)
    assert docker.main(["train", "--config", "test", "--engine", "docker", "--mlflow", "sqlite:///m.db"]) == 2
