"""Can `output.uri` take the run? Every check of a destination, in one place, run before training (preflight) and
before `python -m job publish` uploads: fail in seconds rather than after hours of training.

s3://: a valid bucket name, credentials, the bucket, no finished run at `<prefix>/<run_name>/`, then a probe object
written and deleted under the prefix. hf://: a token, not read-only, then write permission on the repo or, for a
repo the job will create, a namespace the token's account may create repos in. The Hub is asked who the token is
once per run (`hub_account`); the answer is passed to every check that needs it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

from job import publish
from job.config import Config
from job.errors import AuthError, ConfigInputError, OutputError

log = logging.getLogger(__name__)

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

TOKEN_PLACES = "HF_TOKEN (or HF_TOKEN_FILE, HF_TOKEN_SECRET_ID, or the Kaggle secret HF_TOKEN)"


def check(cfg: Config, token: str | None, account: dict[str, Any] | None = None) -> None:
    """Raise a JobError when `cfg.output.uri` cannot take the run; a local folder was already probed when the run
    folder was made (rundir.prepare). `account`: the Hub's whoami answer for `token` (hub_account), None when the
    Hub did not answer. Needs `output.run_name` set."""
    where = cfg.output.location
    if where.scheme == "s3":
        check_s3(where.uri, cfg.output.run_name)
    elif where.scheme == "hf":
        check_hub(where.repo_id, token, account)


# ----------------------------------------------------------------------------------------------
# S3


def check_s3(uri: str, run_name: str | None) -> None:
    check_bucket_name(uri)
    check_bucket(uri, run_name)
    probe_s3(uri)


def check_bucket_name(uri: str) -> None:
    bucket, _ = publish.split_s3(uri)
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ConfigInputError(
            f"output.uri {uri!r}: {bucket!r} is not a valid S3 bucket name (3-63 characters: lowercase letters, "
            "digits, dots and hyphens, starting and ending with a letter or digit); fix output.uri"
        )


def check_bucket(uri: str, run_name: str | None) -> None:
    """The bucket exists and these credentials may list it, and no finished run is at the run's prefix."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, run_prefix = publish.split_s3(uri, run_name)
    client = publish.s3_client()
    try:
        client.head_bucket(Bucket=bucket)
        if run_name and publish.exists(client, bucket, f"{run_prefix}/{publish.MANIFEST}"):
            raise OutputError(
                f"{uri}/{run_name}/{publish.MANIFEST} exists: a finished run is there and is never overwritten; "
                "choose another output.run_name or output.uri"
            )
    except NoCredentialsError:
        raise AuthError(
            f"no AWS credentials to write {uri}: run with an IAM role or set AWS_PROFILE or AWS_ACCESS_KEY_ID"
        ) from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise OutputError(f"bucket {bucket} does not exist; create it or fix output.uri ({uri})") from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise AuthError(
                f"no access to bucket {bucket}: the job's AWS identity needs s3:ListBucket on it and "
                f"s3:GetObject, s3:PutObject on {uri}/*"
            ) from None
        raise OutputError(f"cannot check {uri} ({code}); fix output.uri or the job's S3 access") from None
    except BotoCoreError as e:
        raise OutputError(
            f"cannot reach S3 for {uri} ({e.__class__.__name__}); check the network or AWS_ENDPOINT_URL"
        ) from None


def probe_s3(uri: str) -> None:
    """Write and delete an empty object under the prefix: a policy may allow listing the bucket but not writing."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = publish.split_s3(uri)
    key = "/".join(p for p in (prefix, f".write-probe-{uuid.uuid4().hex}") if p)
    client = publish.s3_client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden", "AllAccessDisabled"):
            raise AuthError(
                f"not allowed to write to {uri}: the job's AWS identity needs s3:PutObject on "
                f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}* (the bucket itself is readable)"
            ) from None
        raise OutputError(
            f"cannot write to {uri} ({code or 'unknown error'}); fix output.uri or the job's S3 access"
        ) from None
    except BotoCoreError as e:
        raise OutputError(
            f"cannot write to {uri} ({e.__class__.__name__}); check the network or AWS_ENDPOINT_URL"
        ) from None
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as e:  # the job itself never deletes: not being allowed to is no failure
        log.warning("wrote s3://%s/%s to test access but could not delete it (%s)", bucket, key, type(e).__name__)
    log.info("destination %s: writable", uri)


# ----------------------------------------------------------------------------------------------
# The Hugging Face Hub


def hub_account(token: str) -> dict[str, Any] | None:
    """Who the token is, asked of the Hub once (whoami is rate-limited); None when the Hub cannot be reached (the
    later step decides, with its own error). A token the Hub refuses (revoked, expired) fails here, by name."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        me = api.whoami(token=token)
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 401:
            raise AuthError(
                f"the Hugging Face token was refused by {api.endpoint} (invalid, expired or revoked); create a new "
                f"one at {api.endpoint}/settings/tokens and update {TOKEN_PLACES}"
            ) from None
        log.warning("could not check the Hugging Face token (%s); continuing", e.__class__.__name__)
        return None
    except Exception as e:  # noqa: BLE001 - offline or an isolated network: the loader decides, with its own error
        log.warning("could not check the Hugging Face token (%s); continuing", e.__class__.__name__)
        return None
    log.info("Hugging Face token of %s: valid", me.get("name"))
    return me


def check_hub(repo_id: str, token: str | None, account: dict[str, Any] | None) -> None:
    """A token, not read-only, that may write to the repo or create it."""
    if not token:
        from huggingface_hub import get_token

        token = get_token()  # a stored `hf auth login`, which the job's own token sources do not read
        account = hub_account(token) if token else None
    if not token:
        raise AuthError(
            f"publishing to hf://{repo_id} needs a Hugging Face token with write access: set {TOKEN_PLACES}"
        )
    role = (((account or {}).get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise AuthError(
            f"the Hugging Face token of {account.get('name')} is read-only; publishing to hf://{repo_id} needs a "
            "write token (or a fine-grained one that may write to that namespace)"
        )
    check_hub_write(repo_id, token, account)


def check_hub_write(repo_id: str, token: str, account: dict[str, Any] | None) -> None:
    """Write permission on an existing repo; for a repo the job will create, a namespace the token's account may
    create repos in. An unreachable Hub is no failure here: publishing decides, and the local run stays complete."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    api = HfApi()
    try:
        api.auth_check(repo_id, write=True, token=token)
    except RepositoryNotFoundError:
        check_hub_namespace(repo_id, account)
        return
    except (GatedRepoError, HfHubHTTPError) as e:
        status = e.response.status_code if e.response is not None else None
        if isinstance(e, GatedRepoError) or status in (401, 403):
            raise AuthError(
                f"the Hugging Face token may not write to hf://{repo_id}; use a write token of an account with write "
                "access to it (a fine-grained token needs write permission on that repo or namespace)"
            ) from None
        log.warning("could not check write access to hf://%s (%s); continuing", repo_id, e.__class__.__name__)
        return
    except Exception as e:  # noqa: BLE001
        log.warning("could not check write access to hf://%s (%s); continuing", repo_id, e.__class__.__name__)
        return
    log.info("destination hf://%s: writable", repo_id)


def check_hub_namespace(repo_id: str, account: dict[str, Any] | None) -> None:
    if account is None:
        log.warning("could not look up the token's account; continuing")
        return
    if "orgs" not in account:
        return  # an answer without the organisations cannot tell who may create repos under `owner`
    owner = repo_id.split("/")[0]
    name = account.get("name")
    roles = {org.get("name"): org.get("roleInOrg") for org in account["orgs"]}
    if owner != name and owner not in roles:
        raise AuthError(
            f"hf://{repo_id} does not exist and {name} cannot create it: {owner} is neither that account nor one of "
            f"its organizations ({', '.join(sorted(roles)) or 'none'}); fix output.uri or join {owner}"
        )
    if roles.get(owner) == "read":
        raise AuthError(
            f"hf://{repo_id} does not exist and {name} has the read role in {owner}, which cannot create repos; "
            "ask an admin of the organization for the write role, or publish under your own account"
        )
    log.info("destination hf://%s: will be created by %s", repo_id, name)


S3_MISSING = ("NoSuchKey", "404", "NotFound")
S3_DENIED = ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def s3_code(error: Exception) -> str:
    """The error code of a botocore ClientError ('' for anything else)."""
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def reading_a_run_from_s3(uri: str, purpose: str, no_bucket: str, missing: str | None = None) -> Iterator[None]:
    """S3's errors while reading a finished run (`job serve`, `job compare`) as the job's one-line errors. `purpose`
    says what needs s3:GetObject, `no_bucket` is the line for a bucket that does not exist, `missing` the one for a
    missing object (None: reported as an unreadable run)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise AuthError(
            f"no AWS credentials to read {uri}: use an IAM role or set AWS_PROFILE or AWS_ACCESS_KEY_ID"
        ) from None
    except ClientError as e:
        code = s3_code(e)
        if missing and code in S3_MISSING:
            raise ConfigInputError(missing) from None
        if code == "NoSuchBucket":
            raise ConfigInputError(no_bucket) from None
        if code in S3_DENIED:
            raise AuthError(f"no access to {uri} ({code}): {purpose} needs s3:GetObject on it") from None
        raise OutputError(f"cannot read {uri} ({code or e.__class__.__name__})") from None
    except BotoCoreError as e:
        raise OutputError(
            f"cannot reach S3 for {uri} ({e.__class__.__name__}); check the network or AWS_ENDPOINT_URL"
        ) from None
