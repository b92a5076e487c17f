"""Preflight, check by check: GPU presence and memory fit, the Hugging Face token, write access to the Hub and S3,
the data files, disk space, and all problems reported at once.

S3 is moto's server on 127.0.0.1 with IAM enforced (its `/moto-api/reset-auth` switch), so a denied write is a real
AWS-style policy decision. The Hub is a local HTTP stand-in (no local Hub exists) answering its access endpoints with
the status codes and `X-Error-Code` / `X-Error-Message` headers the Hub sends; the real `huggingface_hub` client
talks to it. The GPU fit is judged for the GPU a machine would report (name, GiB): CI has none."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from job import config as config_mod
from job import destination, memory, preflight
from job.errors import AuthError, ConfigInputError, DataError, OutputError, ResourceError

ALICE = "hf_aliceWriteToken000000000000"
"""A write token of alice, who has the write role in `team` and the read role in `readers`."""
REVOKED = "hf_revokedToken00000000000000"
BUCKET = "results"


def resolve(*overrides: str, preset: str = "test") -> config_mod.Config:
    return config_mod.resolve(preset, ["output.run_name=r", *overrides])


# ----------------------------------------------------------------------------------------------
# A local stand-in of the Hub's access endpoints


class HubAccess(BaseHTTPRequestHandler):
    """/api/whoami-v2, /api/{models,datasets}/<id>/auth-check and /api/models/<id>/auth-check/write."""

    gated = {"meta-llama/Llama-3.2-3B-Instruct", "gated/dialogs"}
    existing = gated | {"alice/existing", "team/existing", "other/locked", "someone/dialogs", "someone/public"}
    writable = {"alice/existing", "team/existing"}
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ") or None
        self.seen.append(path)
        if token == REVOKED:  # the Hub refuses a revoked token on every endpoint
            return self._answer(401, message="Invalid credentials in Authorization header")
        if path == "/api/whoami-v2":
            if token != ALICE:
                return self._answer(401, message="Invalid credentials in Authorization header")
            orgs = [{"name": "team", "roleInOrg": "write"}, {"name": "readers", "roleInOrg": "read"}]
            return self._answer(200, body={"name": "alice", "orgs": orgs, "auth": {"accessToken": {"role": "write"}}})
        kind, _, rest = path.removeprefix("/api/").partition("/")
        repo = "/".join(rest.split("/")[:2])
        if repo not in self.existing:
            return self._answer(404, code="RepoNotFound")
        if path.endswith("/auth-check/write"):
            return self._answer(200 if token == ALICE and repo in self.writable else 403)
        if repo in self.gated and token != ALICE:
            return self._answer(403, code="GatedRepo")
        return self._answer(200, body={"id": repo, "kind": kind})

    def _answer(self, status: int, code: str | None = None, message: str | None = None, body: dict | None = None):
        data = json.dumps(body or {"error": message or code or status}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start_hub() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubAccess)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def hub(monkeypatch) -> Iterator[str]:
    """The stand-in, for the `huggingface_hub` client in this process."""
    import huggingface_hub.constants

    server, url = start_hub()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    HubAccess.seen = []
    yield url
    server.shutdown()


# ----------------------------------------------------------------------------------------------
# moto's S3 server with IAM enforced: an admin, a writer and a reader who may list and read but not write


@dataclass
class S3Server:
    url: str
    admin: dict[str, str]
    writer: dict[str, str]
    reader: dict[str, str]

    def client(self, who: dict[str, str]):
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=who["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=who["AWS_SECRET_ACCESS_KEY"],
        )


def _user(iam, url: str, name: str, actions: list[str]) -> dict[str, str]:
    iam.create_user(UserName=name)
    statement = {"Effect": "Allow", "Action": actions, "Resource": ["arn:aws:s3:::*", "arn:aws:s3:::*/*"]}
    iam.put_user_policy(
        UserName=name,
        PolicyName=name,
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextmanager
def moto_with_iam() -> Iterator[S3Server]:
    """moto's S3 server with bucket `results`, enforcing IAM once the users exist."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    requests.post(f"{url}/moto-api/reset")  # moto's backends are per process: forget what an earlier file's server made
    iam = boto3.client(
        "iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    admin = _user(iam, url, "admin", ["s3:*"])
    writer = _user(iam, url, "writer", ["s3:*"])
    # AWS checks s3:ListBucket for HeadBucket and ListObjectsV2 and s3:GetObject for HeadObject; moto names the action
    # after the operation instead (s3:HeadBucket always, s3:HeadObject and s3:ListObjectsV2 from moto 5.2.6 on).
    # Granted under both names, the reader may read and list and still not write under either.
    reader = _user(
        iam, url, "reader", ["s3:ListBucket", "s3:GetObject", "s3:HeadBucket", "s3:HeadObject", "s3:ListObjectsV2"]
    )
    stand = S3Server(url, admin, writer, reader)
    stand.client(admin).create_bucket(Bucket=BUCKET)
    # From here on moto authorises every request against the IAM policies above (moto's settings are per process).
    previous = requests.post(f"{url}/moto-api/reset-auth", data=b"0").json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
    yield stand
    requests.post(f"{url}/moto-api/reset-auth", data=str(previous).encode())
    server.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with moto_with_iam() as stand:
        yield stand


@pytest.fixture
def as_user(monkeypatch):
    """Use `who`'s credentials for boto3 in this process."""

    def use(who: dict[str, str]) -> None:
        for key, value in who.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # forget credentials an earlier test resolved

    return use


# ----------------------------------------------------------------------------------------------
# GPU


def test_a_required_gpu_that_is_missing():
    with pytest.raises(ResourceError, match="no CUDA GPU is visible and train.require_gpu is true; run on a GPU"):
        preflight.check_gpu(resolve("train.require_gpu=true"), None)
    preflight.check_gpu(resolve(), None)  # the test preset trains on the CPU


def test_gpu_memory_fit_names_what_to_lower():
    cfg = resolve("train.batch_size=16", preset="llama-3.2-3b-qlora")
    with pytest.raises(ResourceError) as e:
        preflight.check_gpu(cfg, ("Tesla T4", 14.7))
    message = str(e.value)
    assert "meta-llama/Llama-3.2-3B-Instruct needs ~39.4 GB of GPU memory" in message
    assert "more than the Tesla T4's 14.7 GB allow" in message
    assert "lower train.batch_size to 4 with train.gradient_accumulation_steps=16" in message
    preflight.check_gpu(cfg, ("NVIDIA H100 80GB HBM3", 79.1))
    preflight.check_gpu(resolve(preset="llama-3.2-3b-qlora"), ("Tesla T4", 14.7))  # the preset itself fits a T4


def test_sharded_training_is_not_judged_by_the_one_gpu_estimate(monkeypatch):
    cfg = resolve("train.batch_size=16", "train.fsdp=true", preset="llama-3.2-3b-qlora")
    with pytest.raises(ResourceError, match="more than the Tesla T4's"):
        preflight.check_gpu(cfg, ("Tesla T4", 14.7))  # one process: FSDP shards nothing
    monkeypatch.setenv("WORLD_SIZE", "2")
    preflight.check_gpu(cfg, ("Tesla T4", 14.7))


def test_visible_gpu_reports_this_machine():
    import torch

    gpu = preflight.visible_gpu()
    if not torch.cuda.is_available():
        assert gpu is None
    else:
        name, memory_gb = gpu
        assert name == torch.cuda.get_device_name(0) and memory_gb > 1


# ----------------------------------------------------------------------------------------------
# The token and the Hub


def test_a_revoked_token_is_named_as_such(hub):
    cfg = resolve("model.name=someone/public")
    with pytest.raises(AuthError, match=r"token was refused by .* \(invalid, expired or revoked\); create a new one"):
        preflight.check_token(cfg, REVOKED)
    preflight.check_token(cfg, ALICE)
    assert HubAccess.seen == ["/api/whoami-v2", "/api/whoami-v2"]


def test_the_token_is_not_checked_when_no_hub_is_involved(hub):
    preflight.check_token(resolve(), REVOKED)  # built-in model, built-in data, local output
    assert HubAccess.seen == []


def test_an_unreachable_hub_does_not_stop_the_token_check(monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="job.destination"):
        assert preflight.check_token(resolve("model.name=someone/public"), ALICE) is None
    assert "could not check the Hugging Face token" in caplog.text


@pytest.mark.parametrize(
    ("repo", "problem"),
    [
        ("alice/existing", None),
        ("team/existing", None),
        ("alice/new-repo", None),
        ("team/new-repo", None),
        ("other/locked", "the Hugging Face token may not write to hf://other/locked"),
        ("readers/new-repo", "alice has the read role in readers, which cannot create repos"),
        ("stranger/new-repo", "stranger is neither that account nor one of its organizations \\(readers, team\\)"),
    ],
)
def test_hub_write_permission(hub, repo, problem):
    account = destination.hub_account(ALICE)
    HubAccess.seen.clear()
    if problem is None:
        destination.check_hub_write(repo, ALICE, account)
    else:
        with pytest.raises(AuthError, match=problem):
            destination.check_hub_write(repo, ALICE, account)
    assert HubAccess.seen[0] == f"/api/models/{repo}/auth-check/write"
    assert "/api/whoami-v2" not in HubAccess.seen  # the account was asked once, before


def test_hub_data_sets(hub):
    preflight.check_data(resolve("data.dataset=someone/dialogs"), None)
    with pytest.raises(DataError, match="data set 'nobody/none' was not found on .*private data set"):
        preflight.check_data(resolve("data.dataset=nobody/none"), None)
    with pytest.raises(AuthError, match="data set gated/dialogs is gated and this Hugging Face token has no access"):
        preflight.check_data(resolve("data.dataset=gated/dialogs"), None)
    preflight.check_data(resolve("data.dataset=gated/dialogs"), ALICE)
    assert all(path.startswith("/api/datasets/") for path in HubAccess.seen)


# ----------------------------------------------------------------------------------------------
# S3


def s3_config(uri: str) -> config_mod.Config:
    return resolve(f"output.uri={uri}", "output.local_dir=/tmp/unused")


def test_an_invalid_bucket_name_is_a_config_error():
    for uri in ("s3://My_Bucket/runs", "s3://ab/runs", "s3://bucket-/runs", "s3://a..b/runs"):
        with pytest.raises(ConfigInputError, match="is not a valid S3 bucket name"):
            preflight.check_destination(s3_config(uri), None)


def test_a_missing_bucket(s3_server, as_user):
    as_user(s3_server.writer)
    with pytest.raises(OutputError, match="bucket no-such-bucket does not exist; create it or fix output.uri"):
        preflight.check_destination(s3_config("s3://no-such-bucket/runs"), None)


def test_a_bucket_that_can_be_read_but_not_written(s3_server, as_user):
    as_user(s3_server.reader)
    with pytest.raises(AuthError) as e:
        preflight.check_destination(s3_config(f"s3://{BUCKET}/runs"), None)
    assert str(e.value) == (
        f"not allowed to write to s3://{BUCKET}/runs: the job's AWS identity needs s3:PutObject on "
        f"arn:aws:s3:::{BUCKET}/runs/* (the bucket itself is readable)"
    )


def test_a_writable_prefix_passes_and_the_probe_is_gone(s3_server, as_user, caplog):
    as_user(s3_server.writer)
    with caplog.at_level(logging.INFO, logger="job.destination"):
        preflight.check_destination(s3_config(f"s3://{BUCKET}/runs/"), None)
    assert f"destination s3://{BUCKET}/runs: writable" in caplog.text
    listed = s3_server.client(s3_server.admin).list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert listed == []


# ----------------------------------------------------------------------------------------------
# Data files


def write_split_folder(folder: Path, test_bytes: bytes, suffix: str = ".jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    row = json.dumps({"id": "1", "dialogue": "#Person1#: Hi.", "summary": "They greet."}) + "\n"
    for split in ("train", "validation"):
        (folder / f"{split}{suffix}").write_text(row)
    (folder / f"test{suffix}").write_bytes(test_bytes)
    return folder


@pytest.mark.parametrize(
    ("content", "suffix", "problem"),
    [
        (
            '{"dialogue": "Caf\xe9", "summary": "x"}\n'.encode("latin-1"),
            ".jsonl",
            r"is not UTF-8 text \(byte 0xe9 at offset 17\)",
        ),
        (b"id,dialogue,summary\n1,Caf\xe9,x\n", ".csv", r"is not UTF-8 text \(byte 0xe9 at offset 25\)"),
        (b"", ".jsonl", "is empty; put the split's rows in it"),
        (b"\n  \n", ".jsonl", "is empty; put the split's rows in it"),
        (b"id,dialogue,summary\n", ".csv", "holds a header but no rows"),
        (b"not parquet at all", ".parquet", "is not a Parquet file"),
    ],
    ids=["jsonl-latin1", "csv-cp1252", "zero-bytes", "blank-lines", "csv-header-only", "fake-parquet"],
)
def test_bad_data_files(tmp_path, content, suffix, problem):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / f"test{suffix}").write_bytes(content)
    (folder / f"train{suffix}").write_bytes(content)
    with pytest.raises(DataError, match=problem) as e:
        preflight.check_data(resolve(f"data.dataset={folder}"), None)
    assert str(folder) in str(e.value)


def test_utf8_split_across_read_chunks_is_fine(tmp_path):
    path = tmp_path / "train.jsonl"
    prefix = b'{"dialogue": "' + b"a" * (preflight.CHUNK - 15)  # "e-acute" straddles the first chunk's end
    path.write_bytes(prefix + "\xe9t\xe9".encode() + b'", "summary": "s"}\n')
    assert path.read_bytes()[preflight.CHUNK - 1 : preflight.CHUNK + 1] == "\xe9".encode()
    preflight.check_data_file(path)


def test_good_data_passes(tmp_path):
    preflight.check_data(resolve(), None)  # the built-in set
    path = tmp_path / "all.csv"
    path.write_text('id,dialogue,summary\n1,"#Person1#: Caf\xe9?\n#Person2#: Oui.",They order.\n', encoding="utf-8")
    preflight.check_data(resolve(f"data.dataset={path}"), None)


# ----------------------------------------------------------------------------------------------
# Disk


def test_disk_needs_follow_the_parameter_counts(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = resolve(f"output.uri={tmp_path / 'runs'}", "output.merge=true", preset="llama-3.2-3b-qlora")
    counts = memory.parameter_counts(memory.architecture(cfg.model.name))
    download, checkpoints, outputs = preflight.disk_needs(cfg)
    assert download.bytes == counts["total"] * 2 and download.path == tmp_path / "hub"
    assert 6e9 < download.bytes < 7e9  # Llama-3.2-3B in bf16: 6.4 GB on the Hub
    assert checkpoints.path == tmp_path / "runs" / "r" / "checkpoints"
    assert outputs.bytes > counts["total"] * 2  # the merged 16-bit model plus the adapter
    cached = tmp_path / "hub" / "models--meta-llama--Llama-3.2-3B-Instruct" / "blobs"
    cached.mkdir(parents=True)
    (cached / "part").write_bytes(b"\0" * 4096)
    assert preflight.disk_needs(cfg)[0].bytes == download.bytes - 4096  # what is cached is not fetched again


def test_not_enough_disk_for_the_merged_model(tmp_path):
    """A local model whose config.json declares a model larger than any disk: the merged 16-bit copy cannot fit."""
    model = tmp_path / "huge-model"
    model.mkdir()
    huge = {"hidden_size": 16384, "num_hidden_layers": 100000, "intermediate_size": 53248, "num_attention_heads": 128}
    (model / "config.json").write_text(json.dumps({**huge, "num_key_value_heads": 8, "vocab_size": 128256}))
    cfg = resolve(f"model.name={model}", f"output.uri={tmp_path / 'runs'}", "output.merge=true")
    with pytest.raises(ResourceError) as e:
        preflight.check_disk(cfg)
    message = str(e.value)
    assert message.startswith("not enough disk space on /")
    assert f"the run folder with the merged model in {tmp_path / 'runs' / 'r'} ~" in message
    assert "point train.checkpoint_dir or output.uri at a larger disk" in message
    preflight.check_disk(resolve(f"output.uri={tmp_path / 'runs'}"))  # the test preset needs next to nothing


# ----------------------------------------------------------------------------------------------
# Everything at once


def test_every_problem_is_reported_at_once_with_the_first_ones_class(tmp_path):
    folder = write_split_folder(tmp_path / "data", b"")
    cfg = resolve("train.require_gpu=true", f"data.dataset={folder}", f"output.uri={tmp_path / 'runs'}")
    if preflight.visible_gpu() is not None:
        pytest.skip("this machine has a GPU: train.require_gpu is satisfied")
    with pytest.raises(ResourceError) as e:
        preflight.check(cfg, None)
    first, second = str(e.value).split("; also: ")
    assert first.startswith("no CUDA GPU is visible")
    assert second == f"{folder / 'test.jsonl'} is empty; put the split's rows in it or remove the file"
    assert ResourceError.exit_code == 6 and "\n" not in str(e.value)


def test_a_clean_config_passes(tmp_path):
    preflight.check(resolve(f"output.uri={tmp_path}"), None)
    assert not os.listdir(tmp_path)  # preflight writes nothing locally
