"""Batch Transform for a finished run: the same model and container as an endpoint, over JSON Lines in S3 (one
dialogue per line, `SplitType: Line`, `BatchStrategy: MultiRecord`, each mini-batch at most MaxPayloadInMB), one
output line per input line (`AssembleWith: Line`), fetched like a run folder and checked line for line. Imports no
torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from launch import catalog
from launch.errors import LaunchError
from launch.sagemaker import account, follow, serving

CONTENT_TYPE = "application/jsonlines"
OPERATIONS = ["CreateModel", "CreateTransformJob"]
TERMINAL = ("Completed", "Failed", "Stopped")
INVOCATION_TIMEOUT_S = 3600
"""InvocationsTimeoutInSeconds: the most the service allows for one mini-batch."""
MAX_PAYLOAD_MB = 6
"""Batch Transform's default MaxPayloadInMB, which the server's request body cap matches."""
DIALOGUE_BYTES = 800
"""A DialogSum dialogue as one JSON line: ~116 words (the release's median) at ~6 bytes, plus its id."""


def minibatch_seconds(run: serving.Run, instance_type: str, megabytes: int) -> float:
    """Estimated seconds to summarize one mini-batch of `megabytes` of dialogues on the instance's GPU: the
    catalog's generation figures for that many dialogues, as the launch estimate uses them."""
    dialogues = int(megabytes * 1e6 / DIALOGUE_BYTES)
    cfg = run.cfg
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, num_dialogues=dialogues, base=False))
    return catalog.estimate_hours(cfg, catalog.instance(instance_type).gpu)["generation_hours"] * 3600


def max_payload(run: serving.Run, instance_type: str) -> int:
    """The largest MaxPayloadInMB up to MAX_PAYLOAD_MB whose estimated mini-batch takes at most half the timeout."""
    for megabytes in range(MAX_PAYLOAD_MB, 1, -1):
        if minibatch_seconds(run, instance_type, megabytes) <= INVOCATION_TIMEOUT_S / 2:
            return megabytes
    return 1


def job_request(
    name: str,
    run: serving.Run,
    instance_type: str,
    count: int,
    source: str,
    destination: str,
    acct: account.Account | None = None,
) -> dict[str, Any]:
    """CreateTransformJob; the account's keys encrypt the output and, where the instance has an EBS one, the volume."""
    acct = acct or account.Account()
    output = {"S3OutputPath": destination, "Accept": CONTENT_TYPE, "AssembleWith": "Line"}
    resources: dict[str, Any] = {"InstanceType": instance_type, "InstanceCount": count}
    if key := account.output_kms(acct):
        output["KmsKeyId"] = key
    if key := account.volume_kms(acct, instance_type):
        resources["VolumeKmsKeyId"] = key
    return {
        "TransformJobName": name,
        "ModelName": name,
        "MaxConcurrentTransforms": 1,
        "MaxPayloadInMB": max_payload(run, instance_type),
        "BatchStrategy": "MultiRecord",
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": INVOCATION_TIMEOUT_S, "InvocationsMaxRetries": 0},
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": source}},
            "ContentType": CONTENT_TYPE,
            "CompressionType": "None",
            "SplitType": "Line",
        },
        "TransformOutput": output,
        "TransformResources": resources,
        "Tags": serving.tags(run),
    }


def requests_for(
    name: str,
    run: serving.Run,
    image: str,
    role: str,
    secret: str | None,
    instance_type: str,
    count: int,
    source: str,
    destination: str,
    acct: account.Account | None = None,
) -> dict[str, dict[str, Any]]:
    return {
        "CreateModel": serving.model_request(name, run, image, role, secret, acct),
        "CreateTransformJob": job_request(name, run, instance_type, count, source, destination, acct),
    }


def cost_lines(request: dict[str, Any], run: serving.Run) -> list[str]:
    instance, count = request["TransformResources"]["InstanceType"], request["TransformResources"]["InstanceCount"]
    payload = request["MaxPayloadInMB"]
    lines = [
        f"mini-batches: at most {payload} MB (~{int(payload * 1e6 / DIALOGUE_BYTES):,} dialogues), "
        f"estimated ~{minibatch_seconds(run, instance, payload) / 60:.0f} min each on {instance}; "
        f"each may take {INVOCATION_TIMEOUT_S // 60} min"
    ]
    price = serving.hourly_price(instance)
    if price is not None:
        lines.append(f"cost: ${price * count:.3f}/h for {count} x {instance} while the job runs, then nothing")
        lines.append(f"  {serving.price_note()}")
    return lines


def running(sm: Any) -> list[dict[str, Any]]:
    """The region's Batch Transform jobs in progress, with their instances and hourly price."""
    found = []
    for page in sm.get_paginator("list_transform_jobs").paginate(StatusEquals="InProgress"):
        for item in page["TransformJobSummaries"]:
            job = sm.describe_transform_job(TransformJobName=item["TransformJobName"])
            instance, count = job["TransformResources"]["InstanceType"], job["TransformResources"]["InstanceCount"]
            price = serving.hourly_price(instance)
            found.append(
                {
                    "name": job["TransformJobName"],
                    "status": job["TransformJobStatus"],
                    "instances": f"{count} x {instance}",
                    "per_hour": None if price is None else price * count,
                    "created": job.get("CreationTime"),
                }
            )
    return found


def wait(sm: Any, name: str, out: Callable[[str], None], poll_s: float = 30.0) -> dict[str, Any]:
    """Print each status change until the transform job has ended; return its last description."""
    describe = lambda: sm.describe_transform_job(TransformJobName=name)  # noqa: E731
    return serving.wait_for(describe, "TransformJobStatus", TERMINAL, name, out, poll_s)


def _keys(s3: Any, uri: str) -> list[str]:
    bucket, prefix = follow.split_s3(uri)
    return [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


def _lines(s3: Any, bucket: str, key: str) -> int:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return sum(1 for line in body.decode("utf-8", "replace").splitlines() if line.strip())


def fetch(s3: Any, job: dict[str, Any], to: Path) -> Path:
    """Download the job's output to `to/<job name>/` (each input file's `<name>.out`) and check that every input
    file got exactly one output line per input line."""
    source = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    destination = job["TransformOutput"]["S3OutputPath"].rstrip("/") + "/"
    in_bucket, in_prefix = follow.split_s3(source)
    out_bucket, out_prefix = follow.split_s3(destination)
    inputs = [k for k in _keys(s3, source) if not k.endswith("/")]
    # Each output is named after its input's key below the input prefix's last `/`, with `.out` added
    # (s3://b/in/x.jsonl -> <output>/x.jsonl.out; the prefix s3://b/in -> <output>/in/x.jsonl.out).
    base = in_prefix.rsplit("/", 1)[0] + "/" if "/" in in_prefix else ""
    target = to / job["TransformJobName"]
    bad = []
    for key in inputs:
        rel = key[len(base) :]
        out_key = f"{out_prefix}{rel}.out"
        dest = target / f"{rel}.out"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3.download_file(out_bucket, out_key, str(dest))
        except ClientError:
            bad.append(f"{rel}: no output")
            continue
        want, got = (
            _lines(s3, in_bucket, key),
            sum(1 for line in dest.read_text(encoding="utf-8").splitlines() if line.strip()),
        )
        if want != got:
            bad.append(f"{rel}: {got} output lines for {want} input lines")
    if bad:
        raise LaunchError(f"{destination}: {len(bad)} output file(s) do not match their input ({'; '.join(bad[:3])})")
    return target
