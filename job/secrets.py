"""The Hugging Face token, read from wherever the platform keeps secrets, and an early check that it opens the model.

Sources, in order: the `HF_TOKEN` environment variable; a file (`HF_TOKEN_FILE`, else Docker's
`/run/secrets/hf_token`); AWS Secrets Manager (`HF_TOKEN_SECRET_ID`, read with the job's own AWS credentials);
Kaggle's user secrets (on Kaggle only). The value is never logged: every source is named, the token is registered
with the logging filter that redacts it, and it is exported as `HF_TOKEN` for the hub libraries.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from job import logs, runtime
from job.errors import AuthError

log = logging.getLogger(__name__)

DEFAULT_TOKEN_FILE = Path("/run/secrets/hf_token")
"""Where Docker and Compose mount a secret named `hf_token`."""

SECRET_KEY = "HF_TOKEN"
"""The key read from a JSON Secrets Manager secret and the name of the Kaggle secret."""


def resolve_hf_token() -> str | None:
    """The token from the first source that has one, or None (fine for public models)."""
    for source, read in (
        ("environment variable HF_TOKEN", _from_env),
        ("token file", _from_file),
        ("AWS Secrets Manager", _from_secrets_manager),
        ("Kaggle secret HF_TOKEN", _from_kaggle),
    ):
        token, where = read()
        if token:
            logs.register_secret(token)
            os.environ["HF_TOKEN"] = token
            log.info("Hugging Face token: from %s%s", source, f" ({where})" if where else "")
            return token
    log.info("Hugging Face token: none found (fine for public models; gated models need one)")
    return None


def _clean(value: str | None) -> str | None:
    """Tokens pasted into files and secret stores often carry a trailing newline."""
    value = (value or "").strip()
    return value or None


def _from_env() -> tuple[str | None, str]:
    return _clean(os.environ.get("HF_TOKEN")), ""


def _from_file() -> tuple[str | None, str]:
    configured = os.environ.get("HF_TOKEN_FILE")
    path = Path(configured) if configured else DEFAULT_TOKEN_FILE
    if not path.is_file():
        if configured:
            raise AuthError(f"HF_TOKEN_FILE={configured} is not a readable file; fix the path or unset HF_TOKEN_FILE")
        return None, ""
    try:
        token = _clean(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise AuthError(f"cannot read the token file {path}: {e.__class__.__name__}; check its permissions") from None
    if token is None and configured:
        raise AuthError(f"the token file {path} (HF_TOKEN_FILE) is empty; write the token into it")
    return token, str(path)


def _from_secrets_manager() -> tuple[str | None, str]:
    secret_id = os.environ.get("HF_TOKEN_SECRET_ID", "").strip()
    if not secret_id:
        return None, ""
    return _token_from_secret(secret_id, read_secret_string(secret_id, "HF_TOKEN_SECRET_ID")), secret_id


def read_secret_string(secret_id: str, variable: str) -> str | None:
    """The SecretString of a Secrets Manager secret (None for a binary one), read with the job's own AWS
    credentials; `variable` names where the id came from in the error messages."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    # An ARN names its region (the launcher sends one); a plain name is looked up in the job's own region, from
    # AWS_REGION as well: botocore itself reads only AWS_DEFAULT_REGION and the config file.
    if secret_id.startswith("arn:") and secret_id.count(":") >= 6:
        region = secret_id.split(":")[3]
    else:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    try:
        response = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=secret_id)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        raise AuthError(_secrets_manager_fix(secret_id, code, variable)) from None
    except BotoCoreError as e:
        raise AuthError(
            f"cannot read secret {secret_id} from AWS Secrets Manager ({e.__class__.__name__}): the job needs AWS "
            "credentials, a region (AWS_REGION, or give the secret's ARN) and a route to Secrets Manager "
            "(a VPC endpoint or NAT inside a VPC)"
        ) from None
    return response.get("SecretString")


def _secrets_manager_fix(secret_id: str, code: str, variable: str) -> str:
    if code == "ResourceNotFoundException":
        return f"secret {secret_id} ({variable}) does not exist in this account and region; check the id or ARN"
    if code in ("AccessDeniedException", "AccessDenied"):
        return (
            f"not allowed to read secret {secret_id}: grant the job's role secretsmanager:GetSecretValue on it "
            "(and kms:Decrypt for a customer-managed key)"
        )
    return f"cannot read secret {secret_id} from AWS Secrets Manager ({code or 'unknown error'})"


def _token_from_secret(secret_id: str, text: str | None) -> str | None:
    """A secret holds the token itself or JSON such as {"HF_TOKEN": "hf_..."}."""
    if text is None:
        raise AuthError(
            f'secret {secret_id} holds binary data; store the token as a string or JSON {{"HF_TOKEN": ...}}'
        )
    stripped = text.strip()
    if not stripped.startswith("{"):
        return _clean(stripped)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        raise AuthError(f"secret {secret_id} starts with '{{' but is not valid JSON; store the token or JSON") from None
    token = _clean(data.get(SECRET_KEY)) if isinstance(data, dict) else None
    if token is None:
        keys = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise AuthError(f"secret {secret_id} is JSON without a {SECRET_KEY} key (keys: {keys}); add that key")
    return token


def _from_kaggle() -> tuple[str | None, str]:
    if runtime.platform() != "kaggle":
        return None, ""
    return kaggle_secret(SECRET_KEY, "for gated models"), ""


def kaggle_secret(name: str, needed: str = "if this run needs it") -> str | None:
    """The Kaggle user secret `name` attached to this notebook, or None (also when kaggle_secrets is missing)."""
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        log.warning("on Kaggle but kaggle_secrets is not importable; skipping Kaggle secrets")
        return None
    try:
        return _clean(UserSecretsClient().get_secret(name))
    except Exception as e:  # the client raises bare exceptions for "not attached" and for network failures alike
        log.info(
            "no Kaggle secret %s attached to this notebook (%s); attach it under Add-ons > Secrets %s",
            name,
            e.__class__.__name__,
            needed,
        )
        return None


# ----------------------------------------------------------------------------------------------
# Access check before any weights load


def is_hub_id(model_name: str) -> bool:
    """True for hub ids (`owner/name`); false for `builtin:` models and local folders."""
    if model_name.startswith("builtin:") or "://" in model_name:
        return False
    if Path(model_name).exists() or model_name.startswith((".", "/", "~")):
        return False
    return model_name.count("/") == 1 and all(model_name.split("/"))


def check_model_access(model_name: str, token: str | None, revision: str | None = None) -> None:
    """Fail in seconds, not after minutes of loading, when a hub model cannot be read with this token."""
    if not is_hub_id(model_name):
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi()
    page = f"{api.endpoint}/{model_name}"
    try:
        api.auth_check(model_name, token=token)
        if revision:
            api.model_info(model_name, revision=revision, token=token)
    except GatedRepoError:
        if token:
            raise AuthError(
                f"{model_name} is gated and this Hugging Face token has no access: request access on {page} "
                "with the account that owns the token, or use a token of an account that has it"
            ) from None
        raise AuthError(
            f"{model_name} is gated and no Hugging Face token was found: request access on {page}, then set "
            "HF_TOKEN (or HF_TOKEN_FILE, HF_TOKEN_SECRET_ID, or the Kaggle secret HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise AuthError(f"{model_name} has no revision {revision!r}; fix model.revision") from None
    except RepositoryNotFoundError:
        hint = "check the spelling" + ("" if token else ", or set HF_TOKEN if it is a private repository")
        raise AuthError(f"model {model_name!r} was not found on {api.endpoint} ({hint})") from None
    except Exception as e:  # noqa: BLE001
        # No route to the hub (offline mode, an isolated network with the model cached, a hub outage) is not an
        # access problem: the loader decides, with its own error.
        log.warning("could not check access to %s (%s); continuing", model_name, e.__class__.__name__)
        return
    log.info("access to %s: ok", model_name)
