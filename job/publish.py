"""Delivering a finished run folder to S3 or the Hugging Face Hub, and `python -m job publish` to do it again.

The complete run is always on local disk first (manifest.json written last). Publishing only copies it: a failure
leaves the local copy intact, deletes nothing already uploaded, and names the command that finishes the job.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path

from job import config as config_mod
from job import hub, merge, rundir, secrets
from job import uri as uri_mod
from job.config import Config
from job.errors import OutputError, PublishError

log = logging.getLogger(__name__)

MANIFEST = rundir.MANIFEST

S3_MAX_ATTEMPTS = 8
"""Attempts per S3 request (botocore's standard retry mode: exponential backoff with jitter on throttling, 5xx
and connection errors)."""

S3_PART_SIZE = 64 * 1024 * 1024
"""Multipart threshold and part size: a 16 GB merged model goes in 256 parts, well under S3's 10,000."""

SHA256_METADATA = "sha256"  # x-amz-meta-sha256 on every uploaded object: a re-publish skips what already landed


# ----------------------------------------------------------------------------------------------
# The run's files, as its manifest lists them


def run_files(run_dir: Path) -> list[tuple[Path, str]]:
    """(local file, relative posix path) for every file the manifest lists, then the manifest itself, last.
    Refuses a folder without a manifest or one whose files no longer match it (size and sha256)."""
    if not rundir.is_complete(run_dir):
        raise OutputError(
            f"{run_dir} has no {MANIFEST}: that run did not finish, so there is nothing complete to publish; "
            f"run the same `python -m job train` command with output.run_name={run_dir.name} to resume it"
        )
    try:
        entries = json.loads((run_dir / MANIFEST).read_text())["files"]
        rels = [str(entry["path"]) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{run_dir / MANIFEST} is not a valid run manifest ({e.__class__.__name__})") from None
    root = run_dir.resolve()
    outside = [rel for rel in rels if rel == MANIFEST or not (root / rel).resolve().is_relative_to(root)]
    problems = [f"{rel} lies outside the run folder" for rel in outside] or rundir.verify(run_dir)
    if problems:
        raise OutputError(f"{run_dir} no longer matches its {MANIFEST}: " + "; ".join(problems))
    files = [((root / rel).resolve(), Path(rel).as_posix()) for rel in rels]
    files += _merged_outside(run_dir)
    files.append((root / MANIFEST, MANIFEST))
    return files


def _merged_outside(run_dir: Path) -> list[tuple[Path, str]]:
    """On SageMaker the merged model lives outside the run folder (see merge.merged_dir); publish it with the run."""
    folder = merge.merged_dir(run_dir)
    if folder == run_dir / "merged" or not folder.is_dir():
        return []
    return [
        (p.resolve(), f"merged/{p.relative_to(folder).as_posix()}") for p in sorted(folder.rglob("*")) if p.is_file()
    ]


# ----------------------------------------------------------------------------------------------
# Destinations


def deliver(run_dir: Path, cfg: Config) -> str:
    """Copy the finished run to `cfg.output.uri` (s3:// or hf://) and return where it landed."""
    where = cfg.output.location
    uri = where.uri
    files = run_files(run_dir)
    try:
        if where.scheme == "s3":
            return _deliver_s3(files, uri, run_dir.name)
        if where.scheme == "hf":
            return _deliver_hub(run_dir, cfg, files, where.repo_id)
    except OutputError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever broke the upload, the user needs the way to finish it
        raise PublishError(_recovery(run_dir, uri, e)) from None
    raise OutputError(f"output.uri {cfg.output.uri!r} is not s3://bucket/prefix or hf://owner/repo; nothing to publish")


def _recovery(run_dir: Path, uri: str, error: Exception) -> str:
    command = f"python -m job publish {shlex.quote(str(run_dir.resolve()))} --to {shlex.quote(uri)}"
    reason = " ".join(str(error).split()) or error.__class__.__name__
    return (
        f"publishing to {uri} failed: {error.__class__.__name__}: {reason[:500]}. "
        f"The complete run is at {run_dir.resolve()} and nothing uploaded was deleted; "
        f"fix the cause, then finish with: {command}"
    )


def split_s3(uri: str, run_name: str | None = None) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b`); with a run name, the run's own prefix (`a/b/run`)."""
    where = uri_mod.parse(uri)
    return where.bucket, where.key(run_name)


def s3_client():
    import boto3
    from botocore.config import Config as BotoConfig

    # boto3 reads AWS_ENDPOINT_URL itself, so any S3-compatible store works.
    return boto3.client("s3", config=BotoConfig(retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS}))


def _head(client, bucket: str, key: str) -> dict | None:
    """The object's metadata, or None when there is no such object."""
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def exists(client, bucket: str, key: str) -> bool:
    return _head(client, bucket, key) is not None


def _deliver_s3(files: list[tuple[Path, str]], uri: str, run_name: str) -> str:
    from boto3.s3.transfer import TransferConfig
    from tqdm.auto import tqdm

    bucket, run_prefix = split_s3(uri, run_name)
    destination = f"s3://{bucket}/{run_prefix}/"
    client = s3_client()
    if exists(client, bucket, f"{run_prefix}/{MANIFEST}"):
        raise OutputError(
            f"{destination}{MANIFEST} exists: a finished run is there and is never overwritten; "
            "choose another output.run_name or output.uri"
        )
    transfer = TransferConfig(multipart_threshold=S3_PART_SIZE, multipart_chunksize=S3_PART_SIZE)
    total = sum(local.stat().st_size for local, _ in files)
    log.info("uploading %d files (%.1f MB) to %s", len(files), total / 1e6, destination)
    # disable=None: a bar on a terminal, nothing in captured logs (SageMaker, Kaggle) where it would be noise
    kept = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", disable=None) as bar:
        for local, rel in files:  # run_files puts the manifest last: its presence marks a complete upload
            key = f"{run_prefix}/{rel}"
            size, digest = local.stat().st_size, rundir.sha256(local)
            if _landed(client, bucket, key, size, digest):  # an earlier attempt that failed later on
                kept += 1
                bar.update(size)
                continue
            extra = {"Metadata": {SHA256_METADATA: digest}}
            client.upload_file(str(local), bucket, key, ExtraArgs=extra, Config=transfer, Callback=bar.update)
            _verify_size(client, bucket, key, size)
            log.debug("uploaded s3://%s/%s", bucket, key)
    if kept:
        log.info("%d of %d files were already there from an earlier attempt (same size and sha256)", kept, len(files))
    log.info("run delivered to %s", destination)
    return destination


def _landed(client, bucket: str, key: str, size: int, digest: str) -> bool:
    """The object exists with this size and the sha256 this job recorded when it uploaded it."""
    head = _head(client, bucket, key)
    if head is None or head["ContentLength"] != size:
        return False
    # header names are case-insensitive, and botocore keeps the case a server or proxy answered with
    metadata = {name.lower(): value for name, value in head.get("Metadata", {}).items()}
    return metadata.get(SHA256_METADATA) == digest


def _verify_size(client, bucket: str, key: str, expected: int) -> None:
    landed = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if landed != expected:
        raise OSError(f"s3://{bucket}/{key} has {landed} bytes after upload, the local file {expected}")


def _deliver_hub(run_dir: Path, cfg: Config, files: list[tuple[Path, str]], repo_id: str) -> str:
    from huggingface_hub import get_token

    if not get_token():
        raise PermissionError(
            "no Hugging Face token: set HF_TOKEN (or HF_TOKEN_FILE, HF_TOKEN_SECRET_ID, the Kaggle secret HF_TOKEN) "
            f"to a token with write access to {repo_id}"
        )
    commit_url = hub.upload_run(run_dir, cfg, repo_id, files)
    log.info("run delivered to hf://%s (%s)", repo_id, commit_url)
    return f"hf://{repo_id}"


# ----------------------------------------------------------------------------------------------
# python -m job publish RUN_DIR --to URI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m job publish",
        description="Upload a finished local run folder to S3 or the Hugging Face Hub (again, after a failure). "
        "The run lands in <URI>/<run folder name>/ on S3, at the root of the repo on the Hub.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder (holds manifest.json)")
    parser.add_argument(
        "--to", metavar="URI", help="s3://bucket/prefix or hf://owner/repo (default: output.uri of the run's config)"
    )
    return parser


def _run_config(run_dir: Path, to: str | None) -> Config:
    """The run's own resolved config, with output.uri replaced by --to."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise OutputError(f"{run_dir} has no config.yaml; is it a run folder written by `python -m job train`?")
    try:
        return config_mod.resolve(str(path), [f"output.uri={to}"] if to else [])
    except config_mod.ConfigError as e:
        raise OutputError(f"{path}: {e}") from None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise OutputError(f"{run_dir} is not a folder; pass the path of a finished run folder")
    run_files(run_dir)  # refuse an unfinished or altered run before anything else
    cfg = _run_config(run_dir, args.to)
    if not cfg.output.location.remote:
        raise OutputError(f"--to {cfg.output.uri!r}: publish to s3://bucket/prefix or hf://owner/repo")
    from job import destination

    token = secrets.resolve_hf_token() if cfg.output.location.scheme == "hf" else None
    cfg.output.run_name = run_dir.name
    destination.check(cfg, token, destination.hub_account(token) if token else None)
    print(deliver(run_dir, cfg))
    return 0
