"""Everything the SageMaker launcher asks AWS besides submitting: the quota check, the Hugging Face token secret,
uploading input channels, and following a job (status, logs, results, fetch, stop). Plain boto3 clients, so tests
drive them with moto or botocore's Stubber. Imports no torch.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from job import config as config_mod
from launch.errors import LaunchError

log = logging.getLogger("launch.sagemaker")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = ("Completed", "Failed", "Stopped")
RUNS = "runs"


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


# ----------------------------------------------------------------------------------------------------------------
# Quota


def quota_link(region: str, code: str | None = None) -> str:
    base = f"https://{region}.console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas"
    return f"{base}/{code}" if code else base


def check_quota(quotas, region: str, instance_type: str, count: int, spot: bool) -> str | None:
    """Raise LaunchError when the account's quota for this instance type and mode is below `count`; return a
    warning line when the Service Quotas API cannot answer (the job may still fail with ResourceLimitExceeded)."""
    name = f"{instance_type} for {'spot ' if spot else ''}training job usage"
    try:
        for page in quotas.get_paginator("list_service_quotas").paginate(ServiceCode="sagemaker"):
            for q in page["Quotas"]:
                if q["QuotaName"] == name:
                    if q["Value"] < count:
                        raise LaunchError(
                            f"your account's quota '{name}' in {region} is {q['Value']:g}, the job needs {count}; "
                            f"request an increase at {quota_link(region, q['QuotaCode'])} "
                            f"(or choose another --instance{'' if spot else ' or add --spot'})"
                        )
                    return None
    except ClientError as e:
        return f"could not read the SageMaker quota '{name}' ({e.response['Error']['Code']}); if the job fails with ResourceLimitExceeded, see {quota_link(region)}"
    return f"no SageMaker quota named '{name}' in {region}; not checked (see {quota_link(region)})"


# ----------------------------------------------------------------------------------------------------------------
# The Hugging Face token in Secrets Manager


def role_policy_for_secret(secret_arn: str) -> dict[str, Any]:
    """The IAM statement the training job's execution role needs to read the token."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret_arn}],
    }


def store_secret(secrets, secret_id: str, token: str) -> str:
    """Create the secret, or add a new version when it exists; returns its ARN. The token is never logged."""
    try:
        return secrets.create_secret(
            Name=secret_id, SecretString=token, Description="Hugging Face token for dialogsum-qlora training jobs"
        )["ARN"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceExistsException":
            raise
    return secrets.put_secret_value(SecretId=secret_id, SecretString=token)["ARN"]


def secret_arn(secrets, secret_id: str) -> str:
    """The ARN of an existing secret (checks it exists before a job depends on it)."""
    try:
        return secrets.describe_secret(SecretId=secret_id)["ARN"]
    except ClientError as e:
        if e.response["Error"]["Code"] == "ResourceNotFoundException":
            raise LaunchError(
                f"--hf-token-secret {secret_id}: no such secret in this region; add --create-secret to store your "
                f"local HF_TOKEN there"
            ) from None
        raise


# ----------------------------------------------------------------------------------------------------------------
# Input channels: upload once per content hash


def upload_channel(s3, source: Path, s3_uri: str) -> bool:
    """Upload a local file or folder to `s3_uri` (a prefix named after its content hash) unless an earlier launch
    did; a `.complete` marker written last says the upload finished. Returns True when it uploaded."""
    bucket, prefix = split_s3(s3_uri)
    marker = f"{prefix.rstrip('/')}.complete"  # beside the channel's prefix, so the job never sees it
    try:
        s3.head_object(Bucket=bucket, Key=marker)
        return False
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
            raise
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if source.is_file() else f.relative_to(source).as_posix()
        s3.upload_file(str(f), bucket, f"{prefix}{rel}")
    s3.put_object(Bucket=bucket, Key=marker, Body=b"")
    return True


# ----------------------------------------------------------------------------------------------------------------
# Where a job's results are


def shipped_output_uri(s3, job: dict[str, Any]) -> str | None:
    """`output.uri` of the config.yaml a DLC job ran: it travels in the job's `code` channel, not as a
    hyperparameter. None for a job without one."""
    code = next((c for c in job.get("InputDataConfig", []) if c.get("ChannelName") == "code"), None)
    if code is None or s3 is None:
        return None
    bucket, prefix = split_s3(code["DataSource"]["S3DataSource"]["S3Uri"].rstrip("/") + "/")
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}config.yaml")["Body"].read()
    except ClientError:
        return None
    uri = (yaml.safe_load(body) or {}).get("output", {}).get("uri")
    return str(uri) if uri else None


def run_folder_uri(job: dict[str, Any], s3=None) -> str:
    """s3:// URI of the run folder the job publishes: <output.uri>/<job name>/, from its `output.uri`
    hyperparameter (our own image) or the config.yaml in its code channel (the DLC; read with `s3`)."""
    uri = job.get("HyperParameters", {}).get("output.uri")
    if uri is not None:
        uri = str(config_mod.parse_scalar(uri))
    else:
        uri = shipped_output_uri(s3, job)
    if not uri or not uri.startswith("s3://"):
        # No S3 output.uri: the run folder is only in SageMaker's model output, under the job's name.
        out = job["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        return f"{out}/{job['TrainingJobName']}/output/model/{job['TrainingJobName']}/"
    return f"{uri.rstrip('/')}/{job['TrainingJobName']}/"


def read_metrics(s3, job: dict[str, Any]) -> dict[str, Any] | None:
    bucket, prefix = split_s3(run_folder_uri(job, s3))
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}metrics.json")["Body"].read()
    except ClientError:
        return None
    return json.loads(body)


# ----------------------------------------------------------------------------------------------------------------
# Status and logs


def describe(sm, job_name: str) -> dict[str, Any]:
    try:
        return sm.describe_training_job(TrainingJobName=job_name)
    except ClientError as e:
        if e.response["Error"]["Code"] == "ValidationException":
            raise LaunchError(
                f"no training job named {job_name!r} in this account and region (check --region)"
            ) from None
        raise


def status_line(job: dict[str, Any]) -> str:
    secondary = job.get("SecondaryStatus", "")
    line = f"{job['TrainingJobName']}: {job['TrainingJobStatus']}"
    if secondary and secondary != job["TrainingJobStatus"]:
        line += f" ({secondary})"
    if job.get("BillableTimeInSeconds"):
        line += f", billable {job['BillableTimeInSeconds'] / 3600:.2f} h"
    if job.get("FailureReason"):
        line += f"\n  reason: {job['FailureReason']}"
    return line


def _streams(logs, job_name: str) -> list[str]:
    try:
        found = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job_name}/")
    except ClientError as e:
        if e.response["Error"]["Code"] == "ResourceNotFoundException":
            return []  # the group appears with the first job's first log line
        raise
    return sorted(s["logStreamName"] for s in found.get("logStreams", []))


@dataclass
class LogTail:
    """Reads each of a job's log streams forward from where it left off."""

    logs: Any
    job_name: str
    tokens: dict[str, str] = field(default_factory=dict)

    def new_lines(self) -> Iterator[str]:
        for stream in _streams(self.logs, self.job_name):
            while True:
                kwargs = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
                if stream in self.tokens:
                    kwargs["nextToken"] = self.tokens[stream]
                page = self.logs.get_log_events(**kwargs)
                for event in page.get("events", []):
                    yield event["message"]
                token = page.get("nextForwardToken")
                if not page.get("events") or token == self.tokens.get(stream):
                    if token:
                        self.tokens[stream] = token
                    break
                self.tokens[stream] = token


def _transitions(job: dict[str, Any]) -> list[str]:
    return [f"[{t['Status']}] {t.get('StatusMessage', '')}".rstrip() for t in job.get("SecondaryStatusTransitions", [])]


def follow(
    sm,
    logs,
    job_name: str,
    out: Callable[[str], None] = print,
    poll_s: float = 15.0,
    show_logs: bool = True,
) -> dict[str, Any]:
    """Print status transitions (and the job's log lines) until the job ends; return its last description."""
    tail = LogTail(logs, job_name)
    seen, last_lines = 0, collections.deque(maxlen=20)
    while True:
        job = describe(sm, job_name)
        transitions = _transitions(job)
        for line in transitions[seen:]:
            out(line)
        seen = len(transitions)
        if show_logs:
            for line in tail.new_lines():
                last_lines.append(line)
                out(line)
        if job["TrainingJobStatus"] in TERMINAL:
            job["_last_log_lines"] = list(last_lines)
            return job
        time.sleep(poll_s)


def last_log_lines(logs, job_name: str, n: int = 20) -> list[str]:
    lines: collections.deque[str] = collections.deque(maxlen=n)
    lines.extend(LogTail(logs, job_name).new_lines())
    return list(lines)


# ----------------------------------------------------------------------------------------------------------------
# Fetch and stop


def fetch(s3, job: dict[str, Any], to: Path) -> Path:
    """Download the job's run folder to `to/<job name>/` and check every file against its manifest."""
    uri = run_folder_uri(job, s3)
    bucket, prefix = split_s3(uri)
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]
    if f"{prefix}manifest.json" not in keys:
        raise LaunchError(
            f"{uri} holds no complete run (no manifest.json; the job is {job['TrainingJobStatus']}); "
            f"`status {job['TrainingJobName']}` says why"
        )
    target = to / job["TrainingJobName"]
    for key in keys:
        dest = target / key[len(prefix) :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(dest))
    verify_manifest(target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    bad = []
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            bad.append(entry["path"])
    if bad:
        raise LaunchError(f"{folder}: {len(bad)} file(s) differ from manifest.json ({', '.join(bad[:5])}); fetch again")


def stop(sm, job_name: str) -> str:
    job = describe(sm, job_name)
    if job["TrainingJobStatus"] in TERMINAL:
        return f"{job_name} already ended: {job['TrainingJobStatus']}"
    sm.stop_training_job(TrainingJobName=job_name)
    return f"stopping {job_name}: SageMaker sends the job SIGTERM, then SIGKILL after 120 s"
