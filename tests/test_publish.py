"""Publishing runs to S3: the real CLI against moto's S3 server on 127.0.0.1, behind a small HTTP proxy that records
every request (to check the upload order) and can answer chosen requests with S3 errors (to check retries and
recovery). No AWS account is involved: moto stands in for S3 at the HTTP level."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

from job import config as config_mod
from job import destination, publish, rundir
from job.errors import AuthError, OutputError, PublishError
from tests.conftest import job_env, run_job_here

BUCKET = "results"


# ----------------------------------------------------------------------------------------------
# A recording, fault-injecting proxy in front of moto's server


@dataclass
class Fault:
    """Answer requests whose method matches and whose path contains `path` with an S3 error, `times` times
    (None: always). `truncate` instead forwards a shortened body and lets the upstream answer."""

    method: str
    path: str
    status: int = 503
    code: str = "SlowDown"
    times: int | None = None
    truncate: bool = False


class S3Proxy:
    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet test output
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                fault = proxy._fault(self.command, self.path)
                if fault and not fault.truncate:
                    xml = f"<Error><Code>{fault.code}</Code><Message>injected</Message></Error>".encode()
                    self._reply(fault.status, {"Content-Type": "application/xml"}, xml)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "transfer-encoding")}
                if fault:  # a body that shrank in transit, with the checksums that would catch it removed
                    body = body[: len(body) // 2]
                    headers = {
                        k: v
                        for k, v in headers.items()
                        if not k.lower().startswith(
                            (
                                "x-amz-checksum",
                                "content-md5",
                                "x-amz-sdk-checksum",
                                "x-amz-trailer",
                                "content-encoding",
                                "x-amz-decoded",
                            )
                        )
                    }
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                out = {k: v for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection")}
                if self.command != "HEAD":  # a HEAD answer carries the object's length, not its own
                    out["Content-Length"] = str(len(data))
                conn.close()
                self._reply(response.status, out, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes):
                with proxy._lock:
                    proxy.requests.append((self.command, self.path, status))
                self.send_response(status)
                headers = {k.title(): v for k, v in headers.items()}
                headers.setdefault("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.path in path and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def writes(self, prefix: str) -> list[str]:
        """Keys written under `prefix`, in the order their writes succeeded (PUT of an object or a part, POST
        completing a multipart upload)."""
        keys = []
        for method, path, status in self.requests:
            key = urlsplit(path).path.removeprefix(f"/{BUCKET}/")
            if status == 200 and key.startswith(prefix) and (method == "PUT" or "uploadId=" in path):
                keys.append(key)
        return keys

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_url, monkeypatch):
    """A fresh bucket on moto's server; the client used to inspect it goes around the proxy."""
    for key, value in aws_env(moto_url).items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=moto_url)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def proxy(moto_url, monkeypatch):
    p = S3Proxy(moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    yield p
    p.close()


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def cli(*args: str, endpoint: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_job_here(*args, env=job_env(**aws_env(endpoint), **(extra_env or {})))


# ----------------------------------------------------------------------------------------------
# A finished run folder built by hand (the files a run holds, manifest written by the job's own code)


def make_run(parent: Path, name: str, big: int = 0) -> Path:
    run = parent / name
    cfg = config_mod.resolve("test", [f"output.uri={parent}", f"output.run_name={name}"])
    files = {
        "adapter/adapter_config.json": json.dumps({"base_model_name_or_path": "builtin:tiny-llama", "r": 8}),
        "adapter/adapter_model.safetensors": os.urandom(4096 + big),
        "adapter/README.md": "# adapter card written by PEFT\n",
        "adapter/tokenizer.json": json.dumps({"model": {"type": "BPE"}}),
        "base_model/config.json": json.dumps({"model_type": "llama"}),
        "metrics.json": json.dumps(
            {
                "run": {"name": name},
                "scorer": {"n_dialogues": 6},
                "base": {m: 0.1 for m in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
                "finetuned": {
                    **{m: 0.4 for m in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
                    "ci95": {m: [0.3, 0.5] for m in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
                },
            }
        ),
        "predictions.jsonl": '{"id": "1", "finetuned": "A summary."}\n',
        "report.md": "# Report\n\n![loss](loss.png)\n",
        "loss.png": os.urandom(2048),
        "tensorboard/events.out.tfevents.1": os.urandom(512),
        "config.yaml": cfg.to_yaml(),
    }
    for rel, content in files.items():
        path = run / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    rundir.write_manifest(run, cfg, rundir.now())
    return run


def s3_objects(client, prefix: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def assert_landed(client, proxy: S3Proxy, run: Path, prefix: str) -> None:
    """Every manifest file is in S3 byte for byte, with the manifest itself, written last."""
    manifest = json.loads((run / "manifest.json").read_text())
    objects = s3_objects(client, prefix)
    assert set(objects) == {f["path"] for f in manifest["files"]} | {"manifest.json"}
    for entry in manifest["files"]:
        assert hashlib.sha256(objects[entry["path"]]).hexdigest() == entry["sha256"], entry["path"]
        metadata = client.head_object(Bucket=BUCKET, Key=prefix + entry["path"])["Metadata"]
        assert metadata == {"sha256": entry["sha256"]}, entry["path"]  # what a re-publish compares
    assert objects["manifest.json"] == (run / "manifest.json").read_bytes()
    writes = proxy.writes(prefix)
    assert writes[-1] == prefix + "manifest.json"
    assert writes.count(prefix + "manifest.json") == 1


# ----------------------------------------------------------------------------------------------
# Tests


def test_publish_cli_uploads_every_file_manifest_last_and_a_second_run_under_its_own_prefix(tmp_path, s3, proxy):
    first, second = make_run(tmp_path, "run-a"), make_run(tmp_path, "run-b")
    for run in (first, second):
        result = cli("publish", str(run), "--to", f"s3://{BUCKET}/team/runs", endpoint=proxy.url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == f"s3://{BUCKET}/team/runs/{run.name}/"
        assert_landed(s3, proxy, run, f"team/runs/{run.name}/")


def test_a_prefix_that_holds_a_manifest_is_never_written_again(tmp_path, s3, proxy):
    run = make_run(tmp_path, "run-a")
    assert cli("publish", str(run), "--to", f"s3://{BUCKET}/runs", endpoint=proxy.url).returncode == 0
    before = len(proxy.requests)
    again = cli("publish", str(run), "--to", f"s3://{BUCKET}/runs", endpoint=proxy.url)
    assert again.returncode == OutputError.exit_code
    assert f"s3://{BUCKET}/runs/run-a/manifest.json exists" in again.stderr
    assert {m for m, _, _ in proxy.requests[before:]} == {"HEAD"}  # looked, wrote nothing


def test_transient_errors_are_retried(tmp_path, s3, proxy):
    run = make_run(tmp_path, "run-a")
    proxy.faults.append(Fault("PUT", "/runs/run-a/report.md", status=503, code="SlowDown", times=2))
    proxy.faults.append(Fault("PUT", "/runs/run-a/metrics.json", status=500, code="InternalError", times=1))
    result = cli("publish", str(run), "--to", f"s3://{BUCKET}/runs", endpoint=proxy.url)
    assert result.returncode == 0, result.stderr
    assert_landed(s3, proxy, run, "runs/run-a/")
    report_puts = [s for m, p, s in proxy.requests if m == "PUT" and p.endswith("/runs/run-a/report.md")]
    assert report_puts == [503, 503, 200]


def test_permanent_failure_keeps_the_local_run_and_publish_finishes_it(tmp_path, s3, proxy):
    run = make_run(tmp_path, "run-a")
    proxy.faults.append(Fault("PUT", "/runs/run-a/metrics.json", status=403, code="AccessDenied"))
    failed = cli("publish", str(run), "--to", f"s3://{BUCKET}/runs", endpoint=proxy.url)
    assert failed.returncode == PublishError.exit_code
    assert f"The complete run is at {run.resolve()}" in failed.stderr
    assert "AccessDenied" in failed.stderr
    assert rundir.verify(run) == []  # the local copy is complete and untouched
    uploaded = s3_objects(s3, "runs/run-a/")
    assert uploaded and "manifest.json" not in uploaded  # no completion marker on a partial upload

    command = re.search(r"finish with: (python -m job publish .+)$", failed.stderr, re.M).group(1)
    assert command == f"python -m job publish {run.resolve()} --to s3://{BUCKET}/runs"
    proxy.faults.clear()
    finished = cli(*command.split()[3:], endpoint=proxy.url)
    assert finished.returncode == 0, finished.stderr
    assert_landed(s3, proxy, run, "runs/run-a/")
    assert set(uploaded) <= set(s3_objects(s3, "runs/run-a/"))  # nothing uploaded earlier was deleted


def test_a_size_mismatch_after_upload_fails_the_publish(tmp_path, s3, proxy):
    run = make_run(tmp_path, "run-a")
    proxy.faults.append(Fault("PUT", "/runs/run-a/loss.png", truncate=True, times=1))
    cfg = config_mod.resolve(str(run / "config.yaml"), [f"output.uri=s3://{BUCKET}/runs"])
    with pytest.raises(PublishError, match="loss.png has 1024 bytes after upload, the local file 2048"):
        publish.deliver(run, cfg)
    assert "manifest.json" not in s3_objects(s3, "runs/run-a/")


def test_large_files_go_in_parts(tmp_path, s3, proxy, monkeypatch):
    monkeypatch.setattr(publish, "S3_PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    run = make_run(tmp_path, "run-a", big=11 * 1024 * 1024)
    cfg = config_mod.resolve(str(run / "config.yaml"), [f"output.uri=s3://{BUCKET}/runs"])
    assert publish.deliver(run, cfg) == f"s3://{BUCKET}/runs/run-a/"
    assert_landed(s3, proxy, run, "runs/run-a/")
    parts = [p for m, p, _ in proxy.requests if m == "PUT" and "adapter_model.safetensors?" in p and "partNumber=" in p]
    assert len(parts) == 3


def test_publish_refuses_an_unfinished_run(tmp_path, s3, proxy):
    run = make_run(tmp_path, "run-a")
    (run / "manifest.json").unlink()
    result = cli("publish", str(run), "--to", f"s3://{BUCKET}/runs", endpoint=proxy.url)
    assert result.returncode == OutputError.exit_code
    assert "has no manifest.json: that run did not finish" in result.stderr
    assert proxy.requests == []


def test_publish_refuses_a_run_that_changed_after_it_finished(tmp_path):
    run = make_run(tmp_path, "run-a")
    (run / "report.md").write_text("edited")
    with pytest.raises(OutputError, match="changed report.md"):
        publish.run_files(run)


def test_bad_destination_is_one_clear_line(tmp_path):
    run = make_run(tmp_path, "run-a")
    result = cli("publish", str(run), "--to", str(tmp_path / "elsewhere"), endpoint="http://127.0.0.1:9")
    assert result.returncode == OutputError.exit_code
    assert "publish to s3://bucket/prefix or hf://owner/repo" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_delivers_to_s3_and_a_failed_delivery_is_finished_by_publish(tmp_path, s3, proxy):
    """The job end to end: a run lands under <uri>/<run_name>/ with the manifest last; a second run, whose upload
    is refused half way, exits non-zero with its local copy complete, and the printed command finishes it."""
    uri = f"s3://{BUCKET}/experiments"
    common = ["train", "--config", "test", f"output.uri={uri}", f"output.local_dir={tmp_path / 'local'}"]

    first = cli(*common, "output.run_name=first", "output.merge=true", endpoint=proxy.url)
    assert first.returncode == 0, first.stderr[-3000:]
    run = Path(first.stdout.strip().splitlines()[-1])
    assert run == tmp_path / "local" / "first"
    assert_landed(s3, proxy, run, "experiments/first/")
    assert "merged/model.safetensors" in s3_objects(s3, "experiments/first/")

    proxy.faults.append(Fault("PUT", "/experiments/second/report.md", status=403, code="AccessDenied"))
    second = cli(*common, "output.run_name=second", endpoint=proxy.url)
    assert second.returncode == PublishError.exit_code
    assert rundir.verify(tmp_path / "local" / "second") == []
    assert "manifest.json" not in s3_objects(s3, "experiments/second/")
    command = re.search(r"finish with: (python -m job publish .+)$", second.stderr, re.M).group(1)

    landed_before = set(proxy.writes("experiments/second/"))
    assert landed_before and "experiments/second/report.md" not in landed_before

    proxy.faults.clear()
    seen = len(proxy.requests)
    finished = cli(*command.split()[3:], endpoint=proxy.url)
    assert finished.returncode == 0, finished.stderr
    assert_landed(s3, proxy, tmp_path / "local" / "second", "experiments/second/")
    # what landed before the failure (same size and sha256) is not sent again; the rest is
    rewritten = [r for r in proxy.requests[seen:] if r[0] in ("PUT", "POST") and "/experiments/second/" in r[1]]
    assert not [r for r in rewritten if urlsplit(r[1]).path.removeprefix(f"/{BUCKET}/") in landed_before]
    assert f"{len(landed_before)} of " in finished.stderr and "were already there" in finished.stderr
    assert_landed(s3, proxy, run, "experiments/first/")  # the first run is untouched


def test_destination_is_checked_before_training(tmp_path, s3, proxy, monkeypatch):
    def check(uri: str, run_name: str = "next-run") -> None:
        destination.check(config_mod.resolve("test", [f"output.uri={uri}", f"output.run_name={run_name}"]), None)

    check(f"s3://{BUCKET}/runs")
    with pytest.raises(OutputError, match="bucket no-such-bucket does not exist; create it or fix output.uri"):
        check("s3://no-such-bucket/runs")
    publish.deliver(make_run(tmp_path, "done"), config_mod.resolve("test", [f"output.uri=s3://{BUCKET}/runs"]))
    with pytest.raises(OutputError, match=f"s3://{BUCKET}/runs/done/manifest.json exists"):
        check(f"s3://{BUCKET}/runs", "done")
    proxy.faults.append(Fault("HEAD", f"/{BUCKET}", status=403, code="AccessDenied"))
    with pytest.raises(AuthError, match=f"no access to bucket {BUCKET}: .* needs s3:ListBucket"):
        check(f"s3://{BUCKET}/runs")
    assert not [r for r in proxy.requests if r[0] in ("PUT", "POST") and "next-run" in r[1]]


def test_destination_check_without_aws_credentials(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # forget credentials an earlier test's session resolved
    cfg = config_mod.resolve("test", ["output.uri=s3://bucket/runs", "output.run_name=r"])
    with pytest.raises(AuthError, match="no AWS credentials to write s3://bucket/runs: run with an IAM role"):
        destination.check(cfg, None)
