"""Where the Hugging Face token comes from, and the early access check.

Secrets Manager runs on moto. Kaggle's `kaggle_secrets` only exists inside Kaggle's notebooks (no local stand-in), so
it is faked at its module boundary. The Hub's access check talks HTTP to a local stand-in that answers like the Hub
(status codes and `X-Error-Code` headers)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from moto import mock_aws

from job import logs, secrets
from job.errors import AuthError

TOKEN = "hf_testTokenValue0123456789abcdef"  # PLANTED: a fake token the tests look for


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in ("HF_TOKEN", "HF_TOKEN_FILE", "HF_TOKEN_SECRET_ID", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE"):
        monkeypatch.delenv(key, raising=False)
    for key in ("TRAINING_JOB_NAME", "SM_MODEL_DIR", "SM_HPS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(secrets, "DEFAULT_TOKEN_FILE", tmp_path / "run-secrets" / "hf_token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delitem(sys.modules, "kaggle_secrets", raising=False)
    yield
    logs._SECRETS.discard(TOKEN)


def resolved(caplog) -> tuple[str | None, str]:
    """The token and what was logged while resolving it."""
    with caplog.at_level(logging.INFO, logger="job.secrets"):
        token = secrets.resolve_hf_token()
    return token, caplog.text


def fake_kaggle(monkeypatch, secret: str | None) -> list[str]:
    """Install a `kaggle_secrets` module whose client returns `secret` (None: raises as when it is not attached)."""
    asked: list[str] = []

    class UserSecretsClient:
        def get_secret(self, label: str) -> str:
            asked.append(label)
            if secret is None:
                raise Exception("Unexpected response from the service")  # what the real client raises
            return secret

    monkeypatch.setitem(sys.modules, "kaggle_secrets", types.SimpleNamespace(UserSecretsClient=UserSecretsClient))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    return asked


def test_environment_variable_comes_first(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN + "\n")
    token_file = tmp_path / "file-token"
    token_file.write_text("hf_fromTheFileXXXXXXXXXXXXXXXX")
    monkeypatch.setenv("HF_TOKEN_FILE", str(token_file))
    token, logged = resolved(caplog)
    assert token == TOKEN
    assert "from environment variable HF_TOKEN" in logged
    assert TOKEN not in logged


def test_token_file_from_hf_token_file(monkeypatch, caplog, tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    monkeypatch.setenv("HF_TOKEN_FILE", str(path))
    token, logged = resolved(caplog)
    assert token == TOKEN
    assert f"from token file ({path})" in logged
    assert TOKEN not in logged
    import os

    assert os.environ["HF_TOKEN"] == TOKEN  # the hub libraries read it from there


def test_docker_secret_file_is_the_default(caplog):
    secrets.DEFAULT_TOKEN_FILE.parent.mkdir(parents=True)
    secrets.DEFAULT_TOKEN_FILE.write_text(TOKEN)
    token, logged = resolved(caplog)
    assert token == TOKEN
    assert str(secrets.DEFAULT_TOKEN_FILE) in logged


def test_a_configured_file_that_is_missing_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN_FILE", str(tmp_path / "nope"))
    with pytest.raises(AuthError, match=r"HF_TOKEN_FILE=.*nope is not a readable file"):
        secrets.resolve_hf_token()


@pytest.mark.parametrize("stored", [TOKEN, json.dumps({"HF_TOKEN": TOKEN, "other": "x"})], ids=["plain", "json"])
def test_secrets_manager(monkeypatch, caplog, stored):
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="hf/token", SecretString=stored)["ARN"]
        monkeypatch.setenv("HF_TOKEN_SECRET_ID", arn)
        token, logged = resolved(caplog)
    assert token == TOKEN
    assert f"from AWS Secrets Manager ({arn})" in logged
    assert TOKEN not in logged


def test_secrets_manager_errors_name_the_fix(monkeypatch):
    with mock_aws():
        client = boto3.client("secretsmanager")
        monkeypatch.setenv("HF_TOKEN_SECRET_ID", "hf/missing")
        with pytest.raises(AuthError, match="secret hf/missing .* does not exist in this account and region"):
            secrets.resolve_hf_token()
        client.create_secret(Name="hf/wrong-json", SecretString=json.dumps({"token": TOKEN}))
        monkeypatch.setenv("HF_TOKEN_SECRET_ID", "hf/wrong-json")
        with pytest.raises(AuthError, match=r"JSON without a HF_TOKEN key \(keys: token\)") as e:
            secrets.resolve_hf_token()
        assert TOKEN not in str(e.value)


def test_kaggle_secret_on_kaggle(monkeypatch, caplog):
    asked = fake_kaggle(monkeypatch, TOKEN)
    token, logged = resolved(caplog)
    assert token == TOKEN and asked == ["HF_TOKEN"]
    assert "from Kaggle secret HF_TOKEN" in logged


def test_kaggle_without_an_attached_secret_means_no_token(monkeypatch, caplog):
    fake_kaggle(monkeypatch, None)
    token, logged = resolved(caplog)
    assert token is None
    assert "no Kaggle secret HF_TOKEN attached" in logged


def test_kaggle_secrets_are_not_asked_off_kaggle(monkeypatch, caplog):
    asked = fake_kaggle(monkeypatch, TOKEN)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    token, logged = resolved(caplog)
    assert token is None and asked == []
    assert "none found" in logged


def test_resolved_token_is_redacted_from_every_log_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    logs.setup()
    secrets.resolve_hf_token()
    logging.getLogger("job.test").error("request failed with Authorization: Bearer %s", TOKEN)
    err = capsys.readouterr().err
    assert "Bearer ***" in err
    assert TOKEN not in err


# ----------------------------------------------------------------------------------------------
# The access check, against a local stand-in of the Hub's API


class HubAnswers(BaseHTTPRequestHandler):
    """Answers /api/models/<id>/auth-check and /api/models/<id>/revision/<rev> the way the Hub does."""

    gated = {"meta-llama/Llama-3.2-3B-Instruct"}
    granted = {"hf_granted0000000000"}
    seen: list[tuple[str, str | None]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        auth = self.headers.get("Authorization")
        self.seen.append((self.path, auth))
        path = self.path.split("?")[0].removeprefix("/api/models/")
        repo = "/".join(path.split("/")[:2])
        token = auth.removeprefix("Bearer ") if auth else None
        if repo.startswith("nobody/"):
            self._answer(404 if token else 401, "RepoNotFound")
        elif repo in self.gated and token not in self.granted:
            self._answer(403, "GatedRepo")
        elif "/revision/" in path and not path.endswith("/revision/main"):
            self._answer(404, "RevisionNotFound")
        else:
            self._answer(200, None, {"id": repo, "sha": "0" * 40})

    def _answer(self, status: int, code: str | None, body: dict | None = None):
        data = json.dumps(body or {"error": code}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), HubAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    HubAnswers.seen = []
    yield url
    server.shutdown()


def test_gated_model_without_token_fails_naming_the_model_and_the_fix(hub):
    with pytest.raises(AuthError) as e:
        secrets.check_model_access("meta-llama/Llama-3.2-3B-Instruct", None)
    message = str(e.value)
    assert "meta-llama/Llama-3.2-3B-Instruct is gated and no Hugging Face token was found" in message
    assert f"request access on {hub}/meta-llama/Llama-3.2-3B-Instruct" in message
    assert "set HF_TOKEN" in message


def test_gated_model_with_a_token_without_access(hub):
    with pytest.raises(AuthError, match="this Hugging Face token has no access: request access on"):
        secrets.check_model_access("meta-llama/Llama-3.2-3B-Instruct", "hf_notgranted000000000")
    assert HubAnswers.seen[-1][1] == "Bearer hf_notgranted000000000"


def test_gated_model_with_access_passes(hub):
    secrets.check_model_access("meta-llama/Llama-3.2-3B-Instruct", "hf_granted0000000000", revision="main")
    assert [p.split("?")[0] for p, _ in HubAnswers.seen] == [
        "/api/models/meta-llama/Llama-3.2-3B-Instruct/auth-check",
        "/api/models/meta-llama/Llama-3.2-3B-Instruct/revision/main",
    ]


def test_unknown_model_and_revision(hub):
    with pytest.raises(AuthError, match="model 'nobody/no-such-model' was not found on"):
        secrets.check_model_access("nobody/no-such-model", None)
    with pytest.raises(AuthError, match="has no revision 'v9'; fix model.revision"):
        secrets.check_model_access("someone/public-model", None, revision="v9")


def test_builtin_and_local_models_are_not_checked(hub, tmp_path):
    secrets.check_model_access("builtin:tiny-llama", None)
    secrets.check_model_access(str(tmp_path), None)
    assert HubAnswers.seen == []


def test_an_unreachable_hub_does_not_stop_the_job(monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="job.secrets"):
        secrets.check_model_access("someone/public-model", None)
    assert "could not check access to someone/public-model" in caplog.text


@pytest.mark.parametrize(
    ("name", "checked"),
    [
        ("meta-llama/Llama-3.2-3B-Instruct", True),
        ("builtin:tiny-llama", False),
        ("/opt/ml/input/data/model", False),
        ("./models/llama", False),
        ("a/b/c", False),
    ],
)
def test_only_hub_ids_are_checked(name, checked):
    assert secrets.is_hub_id(name) is checked


def test_secret_arn_is_read_in_its_own_region(monkeypatch, caplog):
    with mock_aws():
        arn = boto3.client("secretsmanager", region_name="eu-west-1").create_secret(Name="hf", SecretString=TOKEN)[
            "ARN"
        ]
        monkeypatch.setenv("HF_TOKEN_SECRET_ID", arn)  # the job's region is us-east-1
        token, _ = resolved(caplog)
    assert token == TOKEN


def test_a_secret_name_is_read_in_the_region_of_aws_region(monkeypatch, caplog, tmp_path):
    """botocore reads AWS_DEFAULT_REGION but not AWS_REGION; the job reads both (AWS_REGION first)."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with mock_aws():
        boto3.client("secretsmanager", region_name="eu-west-1").create_secret(Name="hf/token", SecretString=TOKEN)
        monkeypatch.setenv("HF_TOKEN_SECRET_ID", "hf/token")
        monkeypatch.delenv("AWS_REGION", raising=False)
        with pytest.raises(AuthError, match="a region \\(AWS_REGION, or give the secret's ARN\\)"):
            secrets.resolve_hf_token()
        monkeypatch.setenv("AWS_REGION", "eu-west-1")
        token, logged = resolved(caplog)
        assert token == TOKEN and "(hf/token)" in logged
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # AWS_REGION wins, as in the AWS CLI and SDKs
        assert resolved(caplog)[0] == TOKEN
