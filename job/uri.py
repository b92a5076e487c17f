"""Where a run goes or comes from, parsed once: a local folder, `s3://bucket/prefix` or `hf://owner/repo`; and the
rule of an MLflow tracking URI (`output.mlflow`, `MLFLOW_TRACKING_URI`, the launchers' `--mlflow`).

Every module that needs the bucket, the key prefix, the repo id or the local path of a URI asks `parse` for it
instead of taking the string apart itself. Imports neither torch nor any cloud SDK (the launchers use it too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scheme = Literal["local", "s3", "hf"]
SCHEMES = ("s3", "hf", "file")


class LocationError(ValueError):
    """A URI that names no place the job can use; the message says how to write it."""


@dataclass(frozen=True)
class Location:
    uri: str
    """As given, without trailing slashes."""
    scheme: Scheme
    bucket: str = ""
    """s3: the bucket."""
    prefix: str = ""
    """s3: the key prefix, without slashes at either end ('' for the bucket's root)."""
    repo_id: str = ""
    """hf: `owner/repo`."""
    revision: str = ""
    """hf: the revision after `@`, where one was given (`hf://owner/repo@v2`)."""
    path: str = ""
    """local: the folder, without `file://`."""

    @property
    def remote(self) -> bool:
        return self.scheme != "local"

    def key(self, *parts: str | None) -> str:
        """s3: the key of `parts` under the prefix (`runs` + `r1` -> `runs/r1`); empty parts are skipped."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def child(self, name: str) -> str:
        """The URI of `name` under this one (`s3://b/runs` + `r1` -> `s3://b/runs/r1`)."""
        return f"{self.uri}/{name.strip('/')}"

    def local_path(self) -> Path:
        return Path(self.path).expanduser()


def scheme_of(uri: str) -> str:
    """`s3`, `hf`, `local` (a path or file://), or the unknown scheme as written (`gs`)."""
    if "://" not in uri:
        return "local"
    scheme = uri.split("://", 1)[0]
    return "local" if scheme == "file" else scheme


def is_remote(uri: str) -> bool:
    return scheme_of(uri) in ("s3", "hf")


def parse(uri: str, what: str = "output.uri", revision: bool = False) -> Location:
    """The location `uri` names; LocationError, naming `what` (the setting or argument it came from), when it names
    none. `revision`: accept `hf://owner/repo@revision` (reading a run; a destination has no revision)."""
    scheme = scheme_of(uri)
    if scheme == "local" and "://" not in uri and uri.lower().startswith(("s3:", "hf:")):
        raise LocationError(f"{what} {uri!r} is missing a slash; use s3://bucket/prefix or hf://owner/repo")
    if scheme not in ("local", "s3", "hf"):
        raise LocationError(
            f"{what} {uri!r}: unknown scheme {scheme}://; use a local folder, s3://bucket/prefix or hf://owner/repo"
        )
    stripped = uri.rstrip("/") or uri
    if scheme == "local":
        return Location(stripped, "local", path=stripped.removeprefix("file://") or "/")
    rest = stripped.split("://", 1)[1]
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise LocationError(f"{what} {uri!r} names no bucket; use s3://bucket/prefix")
        return Location(stripped, "s3", bucket=bucket, prefix=prefix.strip("/"))
    repo, _, rev = rest.strip("/").partition("@") if revision else (rest.strip("/"), "", "")
    if len([x for x in repo.split("/") if x]) != 2 or "//" in repo or "@" in repo or "@" in rev:
        raise LocationError(f"{what} {uri!r} must be hf://owner/repo" + ("[@revision]" if revision else ""))
    return Location(stripped, "hf", repo_id=repo, revision=rev)


TRACKING_SCHEMES = ("http://", "https://", "file:", "sqlite:")
SAGEMAKER_MLFLOW_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:mlflow-(tracking-server|app)/[A-Za-z0-9-]+$"
)
_USERINFO = re.compile(r"^(https?://)[^/@]*@")


def tracking_problem(uri: str) -> str | None:
    """What is wrong with an MLflow tracking URI, or None: an http(s) server (without a password in it), a `file:` or
    `sqlite:` store, or a SageMaker MLflow ARN (a tracking server or an MLflow app)."""
    if _USERINFO.match(uri) and ":" in uri.split("://", 1)[1].split("@", 1)[0]:
        return (
            f"{redact_userinfo(uri)} carries a password: leave it out of the URI and set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead, which are never logged"
        )
    if uri.startswith(TRACKING_SCHEMES) or SAGEMAKER_MLFLOW_ARN.match(uri):
        return None
    if uri.startswith("arn:"):
        return (
            f"{uri!r} is not a SageMaker MLflow ARN; it looks like "
            "arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME (or mlflow-app/ID)"
        )
    return (
        f"{uri!r} is not a tracking URI: give http(s)://HOST:PORT, file:/path, sqlite:///path.db or a SageMaker "
        "MLflow ARN"
    )


def redact_userinfo(uri: str) -> str:
    """`https://user:secret@host` as `https://***@host`, for messages."""
    return _USERINFO.sub(r"\1***@", uri)
