"""`python -m launch sagemaker stage-model`: a Hub model copied to S3 once, read back by the job as its `model` channel
with no token, and the training request and endpoint entries that use it.

Stand-ins: S3 is moto's server; the Hub a local HTTP stand-in of the endpoints `huggingface_hub` downloads through
(`/api/models/<id>/revision/<rev>` with file metadata, `/<id>/resolve/<commit>/<file>`), serving the built-in tiny
Llama's files and answering only with the token. No local Hub exists; the stand-in sits at the outermost edge, the
HTTP server, and the real client talks to it."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from job import builtin, runtime
from launch import service_model
from launch.errors import LaunchError
from launch.sagemaker import cli as sm_cli
from launch.sagemaker import stage
from tests.conftest import job_env, run_job_here
from tests.test_bad_inputs import QUICK_TRAIN

MODEL_ID = "owner/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_stageTestToken0123456789abcdef"  # PLANTED: a fake token
BUCKET = "staging"
OUTPUT = f"s3://{BUCKET}/exp"
LFS = {".safetensors"}


class HubFiles:
    """A model repository at one commit, served as the Hub serves it; counts the file downloads."""

    def __init__(self, folder: Path):
        self.files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        self.downloads: Counter[str] = Counter()
        self.tokens: set[str] = set()

    def sibling(self, name: str) -> dict:
        data = self.files[name]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        entry = {"rfilename": name, "size": len(data), "blobId": blob}
        if Path(name).suffix in LFS:
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry

    def etag(self, name: str) -> str:
        entry = self.sibling(name)
        return entry["lfs"]["sha256"] if "lfs" in entry else entry["blobId"]

    def start(self) -> tuple[ThreadingHTTPServer, str]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                path = self.path.split("?")[0]
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if token != TOKEN:  # a gated model
                    return self._send(403, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, body)
                hub.tokens.add(token)
                if path in (f"/api/models/{MODEL_ID}/revision/main", f"/api/models/{MODEL_ID}/revision/{COMMIT}"):
                    info = {"id": MODEL_ID, "sha": COMMIT, "siblings": [hub.sibling(n) for n in hub.files]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
                if path.startswith(f"/api/models/{MODEL_ID}/revision/"):
                    return self._send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, body)
                prefix = f"/{MODEL_ID}/resolve/{COMMIT}/"
                if path.startswith(prefix) and path.removeprefix(prefix) in hub.files:
                    name = path.removeprefix(prefix)
                    if body:
                        hub.downloads[name] += 1
                    headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hub.etag(name)}"'}
                    return self._send(200, hub.files[name], headers, body)
                return self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"}, body)

            def _send(self, status: int, data: bytes, headers: dict, body: bool):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    files = HubFiles(builtin.build("builtin:tiny-llama", tmp_path_factory.mktemp("tiny-llama")))
    server, url = files.start()
    files.url = url
    yield files
    server.shutdown()


@pytest.fixture(scope="module")
def s3_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def env(hub, s3_url, monkeypatch):
    for key, value in {
        "AWS_ENDPOINT_URL": s3_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return s3


STAGE = ["stage-model", MODEL_ID, "--revision", "main", "--output", OUTPUT, "--region", "us-east-1"]
STAGED = stage.staged_uri(OUTPUT, MODEL_ID, COMMIT)


def test_staged_once_then_the_job_trains_from_the_channel_without_a_token(env, hub, tmp_path, capsys):
    assert sm_cli.main(STAGE) == 0
    out, err = capsys.readouterr()
    assert out.strip() == STAGED == f"s3://{BUCKET}/exp/models/{MODEL_ID}/{COMMIT}/"
    assert f"{MODEL_ID} at {COMMIT}: {len(hub.files)} file(s) copied, 0 already there" in err
    assert hub.tokens == {TOKEN} and TOKEN not in out + err
    prefix = f"exp/models/{MODEL_ID}/{COMMIT}/"
    listing = {o["Key"].removeprefix(prefix): o for o in env.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert set(listing) == set(hub.files) | {runtime.STAGED_MODEL}
    for name, data in hub.files.items():
        assert env.get_object(Bucket=BUCKET, Key=prefix + name)["Body"].read() == data
    record = json.loads(env.get_object(Bucket=BUCKET, Key=prefix + runtime.STAGED_MODEL)["Body"].read())
    assert (record["model_id"], record["revision"]) == (MODEL_ID, COMMIT)
    assert {f["name"]: f["etag"] for f in record["files"]} == {n: hub.etag(n) for n in hub.files}

    assert sm_cli.main(STAGE) == 0  # again: nothing downloaded, nothing written
    assert f"0 file(s) copied, {len(hub.files)} already there" in capsys.readouterr().err
    assert set(hub.downloads.values()) == {1}
    again = {o["Key"].removeprefix(prefix): o for o in env.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {k: (o["Size"], o["ETag"], o["LastModified"]) for k, o in again.items()} == {
        k: (o["Size"], o["ETag"], o["LastModified"]) for k, o in listing.items()
    }

    # what `--model-s3 URI` checks before submitting
    stage.check_staged(env, STAGED, MODEL_ID, COMMIT)
    with pytest.raises(LaunchError, match=r"holds owner/tiny-llama, but the config trains model.name=meta-llama/"):
        stage.check_staged(env, STAGED, "meta-llama/Llama-3.2-3B-Instruct")
    with pytest.raises(LaunchError, match=r"but the config pins model\.revision=f{40}; stage that commit"):
        stage.check_staged(env, STAGED, MODEL_ID, "f" * 40)
    with pytest.raises(LaunchError, match=r"no staged-model\.json there, so no complete staged model; stage one"):
        stage.check_staged(env, f"s3://{BUCKET}/exp/models/{MODEL_ID}/", MODEL_ID)

    # SageMaker copies the channel into the container; here SM_CHANNEL_MODEL points at the same files
    channel = tmp_path / "channel" / "model"
    channel.mkdir(parents=True)
    for name in listing:
        env.download_file(BUCKET, prefix + name, str(channel / name))
    run = run_job_here(
        *["train", "--config", "test", f"output.uri={tmp_path / 'runs'}", "output.run_name=staged",
         "model.name=channel:model", *QUICK_TRAIN],
        env=job_env(SM_CHANNEL_MODEL=str(channel)),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "HF_TOKEN" not in job_env() and "Hugging Face token: none found" in run.stderr
    adapter = json.loads((tmp_path / "runs" / "staged" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == MODEL_ID


def test_a_model_that_needs_the_token_is_refused_without_one(env, hub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))  # none stored either
    assert sm_cli.main(STAGE) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {MODEL_ID} is gated and no Hugging Face token was found: request access on {hub.url}/{MODEL_ID}, "
        "then set HF_TOKEN (or run `hf auth login`)"
    )


def test_an_unknown_revision_or_an_unreachable_hub_is_one_line(env, hub, monkeypatch, capsys):
    wrong = [*STAGE[:3], "no-such-branch", *STAGE[4:]]
    assert sm_cli.main(wrong) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --revision no-such-branch: {MODEL_ID} has no such revision; give a commit of {hub.url}/{MODEL_ID}"
    )
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert sm_cli.main(STAGE) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not list {MODEL_ID} on http://127.0.0.1:{port} (") and "Traceback" not in err
    assert err.endswith("); check the network")


def test_the_request_reads_the_staged_channel_and_the_dry_run_says_so(capsys):
    argv = ["--config", "llama-3.2-3b-qlora", "--instance", "ml.g5.xlarge", "--region", "us-east-1", "--dry-run"]
    assert sm_cli.main([*argv, "--model-s3", STAGED]) == 0
    out, err = capsys.readouterr()
    request = json.loads(out)
    model = next(c for c in request["InputDataConfig"] if c["ChannelName"] == "model")
    assert model["DataSource"]["S3DataSource"]["S3Uri"] == STAGED
    assert "  name: channel:model" in err  # the config.yaml the job reads
    assert f"model: meta-llama/Llama-3.2-3B-Instruct staged at {STAGED} -> input channel `model`" in err
    assert "is gated on the Hugging Face Hub" not in err

    assert sm_cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "model: meta-llama/Llama-3.2-3B-Instruct downloaded from the Hugging Face Hub at every start" in err

    assert sm_cli.main([*argv, "--model-s3", "/local/weights"]) == 2
    assert (
        "--model-s3 '/local/weights': give the s3://bucket/prefix/ that `stage-model` printed"
        in capsys.readouterr().err
    )


def test_endpoint_entries_of_a_staged_model_are_valid_model_data():
    params = {
        "ModelName": "dialogsum-endpoint",
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/SageMakerEndpoint",
        "PrimaryContainer": {
            "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/dialogsum-qlora:0.1.0",
            "ModelDataSource": stage.model_data_source(STAGED),
            "AdditionalModelDataSources": [stage.additional_model_data_source(STAGED)],
        },
    }
    assert service_model.problems("sagemaker", "CreateModel", params) == []
    assert params["PrimaryContainer"]["AdditionalModelDataSources"][0]["S3DataSource"]["S3Uri"] == STAGED
