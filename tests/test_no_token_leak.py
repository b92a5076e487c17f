"""A planted Hugging Face token must never reach a log, an exception, a run file or an uploaded file.

The job runs as a subprocess with HF_TOKEN set to a planted value and publishes to a local stand-in of the Hub
(see test_hub), which proves the token was used (it arrives in the Authorization header) while every byte the job
wrote, uploaded or printed is searched for it."""

from __future__ import annotations

import secrets as pysecrets
import subprocess
from pathlib import Path

import pytest

from job.errors import PublishError
from tests.conftest import job_env, run_job
from tests.test_hub import HubStandIn
from tests.test_publish import make_run


@pytest.fixture
def stand_in():
    hub = HubStandIn()
    server = hub.start()
    yield hub
    server.shutdown()


def planted() -> str:
    return "hf_PLANTED" + pysecrets.token_hex(16)


def job(*args: str, token: str, endpoint: str, home: Path) -> subprocess.CompletedProcess:
    # HF_HUB_OFFLINE=0: the job must reach the Hub stand-in; nothing else is online
    return run_job(*args, env=job_env(HF_TOKEN=token, HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_OFFLINE="0"))


def hits(token: str, root: Path) -> list[str]:
    """Files under `root` whose bytes contain the token."""
    needle = token.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_planted_token_appears_in_no_output(tmp_path, stand_in):
    token = planted()
    result = job(
        "train",
        "--config",
        "test",
        "output.uri=hf://team/leak-check",
        f"output.local_dir={tmp_path / 'runs'}",
        "output.run_name=leak",
        "output.merge=true",
        token=token,
        endpoint=stand_in.url,
        home=tmp_path / "hf-home",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (commit,) = stand_in.commits
    assert commit.authorization == f"Bearer {token}"  # the token was read and used
    assert "from environment variable HF_TOKEN" in result.stderr

    assert token not in result.stdout
    assert token not in result.stderr
    assert hits(token, tmp_path) == []  # run folder (config.yaml, manifest, tensorboard, merged/...), hub home
    assert (tmp_path / "runs" / "leak" / "tensorboard").is_dir()
    assert [path for path, data in commit.files.items() if token.encode() in data] == []
    assert "merged/model.safetensors" in commit.files


def test_a_token_echoed_back_in_a_server_error_is_redacted(tmp_path):
    hub = HubStandIn(fail_commits=99, fail_status=403, echo_authorization=True)
    server = hub.start()
    try:
        token = planted()
        run = make_run(tmp_path, "run-a")
        result = job("publish", str(run), "--to", "hf://team/repo", token=token, endpoint=hub.url, home=tmp_path)
    finally:
        server.shutdown()
    assert result.returncode == PublishError.exit_code
    assert "Bearer ***" in result.stderr  # the server's message got through, with the token masked
    assert token not in result.stdout + result.stderr
    assert hits(token, tmp_path) == []
