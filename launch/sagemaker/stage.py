"""`python -m launch sagemaker stage-model MODEL_ID --revision SHA`: a Hub model's weights copied to S3 once.

Every spot restart, tuning trial and endpoint would otherwise download the base model from the Hub again, with a
token in the job, and an account without internet access cannot reach the Hub at all. Staged, the weights lie under
`<output>/models/<model id>/<commit>/` with `staged-model.json` (the id, the commit and every file) written last;
the training job reads them as its `model` input channel (`model.name=channel:model`, `--model-s3 URI`), an
endpoint as model data (`additional_model_data_source`, `model_data_source`).

Copying compares each file by name, size and the Hub's etag (kept in the S3 object's metadata): a second call
copies nothing, an interrupted one copies only what is missing. Files travel one at a time through a temporary
folder, so the local disk holds one file at most. Uses the local Hugging Face token; imports no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import runtime
from launch.errors import BadInput, LaunchError

COMMAND = "stage-model"
CHANNEL = "model"
"""The training job's input channel of staged weights; the job reads it as `model.name=channel:model`."""
STAGED = runtime.STAGED_MODEL
ETAG_KEY = "hub-etag"
"""S3 object metadata: the Hub's etag of the file (the LFS sha256, or the git blob id of a small file)."""
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    etag: str


@dataclass
class Staged:
    uri: str
    """s3://bucket/prefix/models/<model id>/<commit>/"""
    model_id: str
    revision: str
    """The commit the files are."""
    copied: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def staged_uri(output: str, model_id: str, commit: str) -> str:
    """Where a model's weights at one commit are staged under the launcher's output prefix."""
    return f"{output.rstrip('/')}/models/{model_id}/{commit}/"


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


# ----------------------------------------------------------------------------------------------------------------
# The Hub side


def hub_token() -> str | None:
    """The local Hugging Face token (HF_TOKEN, or the one `hf auth login` stored)."""
    from huggingface_hub import get_token

    return get_token()


def hub_files(model_id: str, revision: str, token: str | None) -> tuple[str, list[HubFile]]:
    """(commit, files) of the model at `revision`, each file with its size and etag, as the Hub lists them."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    page = f"{api.endpoint}/{model_id}"
    try:
        info = api.model_info(model_id, revision=revision, files_metadata=True, token=token)
    except GatedRepoError:
        raise LaunchError(
            f"{model_id} is gated and "
            + ("this Hugging Face token has no access" if token else "no Hugging Face token was found")
            + f": request access on {page}, then set HF_TOKEN (or run `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise BadInput(f"--revision {revision}: {model_id} has no such revision; give a commit of {page}") from None
    except RepositoryNotFoundError:
        hint = "check the spelling" + ("" if token else ", or set HF_TOKEN if it is a private repository")
        raise BadInput(f"{model_id}: no such model on {api.endpoint} ({hint})") from None
    except Exception as e:  # noqa: BLE001 - no route to the Hub, a refused token, an outage: one line, not a traceback
        raise LaunchError(
            f"could not list {model_id} on {api.endpoint} ({_first_line(e)}); check the network"
        ) from None
    files = [
        HubFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else s.blob_id)
        for s in info.siblings or []
    ]
    return info.sha, files


def download(model_id: str, commit: str, name: str, token: str | None, folder: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            model_id,
            name,
            revision=commit,
            token=token,
            local_dir=folder,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except Exception as e:  # noqa: BLE001 - what is in S3 already stays; the same command copies the rest
        raise LaunchError(
            f"downloading {name} of {model_id} failed ({_first_line(e)}); run the same command again to copy the files "
            "that are still missing"
        ) from None
    return Path(path)


def _first_line(e: Exception) -> str:
    return f"{e.__class__.__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")


# ----------------------------------------------------------------------------------------------------------------
# The S3 side


def s3_files(s3: Any, uri: str) -> dict[str, int]:
    """Name (relative to `uri`) -> size of each object under it."""
    bucket, prefix = split_s3(uri)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"].removeprefix(prefix)] = obj["Size"]
    return found


def already_there(s3: Any, uri: str, file: HubFile, sizes: dict[str, int]) -> bool:
    """The object exists with the file's size and the Hub's etag recorded when it was copied."""
    if sizes.get(file.name) != file.size:
        return False
    bucket, prefix = split_s3(uri)
    head = s3.head_object(Bucket=bucket, Key=prefix + file.name)
    return head.get("Metadata", {}).get(ETAG_KEY) == file.etag


def manifest(model_id: str, commit: str, files: list[HubFile]) -> bytes:
    record = {
        "model_id": model_id,
        "revision": commit,
        "files": [{"name": f.name, "size": f.size, "etag": f.etag} for f in sorted(files, key=lambda f: f.name)],
    }
    return (json.dumps(record, indent=2) + "\n").encode()


def stage(s3: Any, model_id: str, revision: str, output: str, token: str | None, say=print) -> Staged:
    """Copy the model's files that S3 does not hold yet, then `staged-model.json` (written last, and only when it
    changes): a prefix with it holds every file."""
    commit, files = hub_files(model_id, revision, token)
    uri = staged_uri(output, model_id, commit)
    bucket, prefix = split_s3(uri)
    sizes = s3_files(s3, uri)
    result = Staged(uri=uri, model_id=model_id, revision=commit)
    with tempfile.TemporaryDirectory(prefix="dialogsum-stage-") as tmp:
        for file in sorted(files, key=lambda f: f.name):
            if already_there(s3, uri, file, sizes):
                result.kept.append(file.name)
                continue
            say(f"copying {file.name} ({file.size / 2**20:,.1f} MB)")
            local = download(model_id, commit, file.name, token, Path(tmp))
            s3.upload_file(str(local), bucket, prefix + file.name, ExtraArgs={"Metadata": {ETAG_KEY: file.etag}})
            local.unlink()
            result.copied.append(file.name)
    record = manifest(model_id, commit, files)
    if result.copied or read_manifest(s3, uri) != record:
        s3.put_object(Bucket=bucket, Key=prefix + STAGED, Body=record)
    return result


def read_manifest(s3: Any, uri: str) -> bytes | None:
    from botocore.exceptions import ClientError

    bucket, prefix = split_s3(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=prefix.rstrip("/") + "/" + STAGED)["Body"].read()
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def check_staged(s3: Any, uri: str, model_id: str, revision: str | None = None) -> dict[str, Any]:
    """`--model-s3 URI` must hold a complete staging (its staged-model.json), of the model (and pinned commit) the
    config names; returns that record."""
    record = read_manifest(s3, uri)
    if record is None:
        raise LaunchError(
            f"--model-s3 {uri}: no {STAGED} there, so no complete staged model; stage one with "
            f"`python -m launch sagemaker {COMMAND} {model_id} --revision SHA` and pass the URI it prints"
        )
    staged = json.loads(record)
    if staged["model_id"] != model_id:
        raise BadInput(
            f"--model-s3 {uri} holds {staged['model_id']}, but the config trains model.name={model_id}; stage that "
            "model or pass its staged URI"
        )
    if revision and COMMIT.match(revision) and staged["revision"] != revision:
        raise BadInput(
            f"--model-s3 {uri} holds {model_id} at {staged['revision']}, but the config pins model.revision={revision}; "
            "stage that commit or pass its staged URI"
        )
    return staged


# ----------------------------------------------------------------------------------------------------------------
# Where the training request and endpoints use a staged model


def model_s3_problem(uri: str) -> str | None:
    if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+", uri):
        return f"--model-s3 {uri!r}: give the s3://bucket/prefix/ that `{COMMAND}` printed"
    return None


def source_line(model_name: str, model_s3: str | None, secret: str | None, channels: list[Any]) -> str:
    """What the dry run says about where the job's base model comes from; `channels`: the plan's input channels."""
    if model_s3:
        return (
            f"model: {model_name} staged at {model_s3} -> input channel `{CHANNEL}` (model.name=channel:{CHANNEL}); "
            "no Hugging Face token in the job"
        )
    if any(ch.name == CHANNEL for ch in channels):
        return f"model: {model_name} -> input channel `{CHANNEL}`"
    if model_name.startswith(("builtin:", runtime.CHANNEL)):
        return f"model: {model_name}"
    token = f"with the token in secret {secret}" if secret else "without a token"
    return (
        f"model: {model_name} downloaded from the Hugging Face Hub at every start, {token}; stage it once with "
        f"`python -m launch sagemaker {COMMAND} {model_name} --revision SHA` and pass --model-s3 URI"
    )


def model_data_source(uri: str) -> dict[str, Any]:
    """The `ModelDataSource` of a SageMaker model (CreateModel's container) whose weights are a staged model: the
    uncompressed files under `uri`, at /opt/ml/model."""
    return {"S3DataSource": {"S3Uri": uri.rstrip("/") + "/", "S3DataType": "S3Prefix", "CompressionType": "None"}}


def additional_model_data_source(uri: str, channel: str = "base") -> dict[str, Any]:
    """One `AdditionalModelDataSources` entry of a SageMaker model: a staged base model beside the adapter, at
    /opt/ml/additional-model-data-sources/<channel>/ in the endpoint's container."""
    return {"ChannelName": channel, **model_data_source(uri)}


# ----------------------------------------------------------------------------------------------------------------
# The command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m launch sagemaker {COMMAND}",
        description="Copy a Hugging Face Hub model to S3 once (with your local token), for training jobs and "
        "endpoints to read as an input channel or model data: no download from the Hub and no token in the job.",
    )
    p.add_argument("model_id", metavar="MODEL_ID", help="hub id, e.g. meta-llama/Llama-3.2-3B-Instruct")
    p.add_argument("--revision", required=True, metavar="SHA", help="the commit to stage (a branch is resolved)")
    p.add_argument(
        "--output", metavar="S3_URI", help="s3://bucket/prefix as for training (default: the SageMaker default bucket)"
    )
    p.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    return p


def main(argv: list[str]) -> int:
    """Stage the model and print the URI to pass as --model-s3."""
    import boto3

    from launch.sagemaker import checks, cli

    args = parser().parse_args(argv)
    if args.output and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", args.output):
        raise BadInput(f"--output {args.output!r}: give s3://bucket/prefix")
    boto = boto3.Session(region_name=checks.region_of(args, dry_run=False))
    s3 = boto.client("s3")
    if args.output:
        cli.check_bucket(s3, args.output, boto.region_name)
        output = args.output.rstrip("/")
    else:
        output = f"s3://{cli.sagemaker_session(boto, None).default_bucket()}/{checks.DEFAULT_PREFIX}"
    staged = stage(s3, args.model_id, args.revision, output, hub_token(), say=lambda m: print(m, file=sys.stderr))
    print(
        f"{staged.model_id} at {staged.revision}: {len(staged.copied)} file(s) copied, {len(staged.kept)} already "
        "there",
        file=sys.stderr,
    )
    print(staged.uri)
    return 0
