"""`python -m launch image build|push`: build the job's container image, push it to Amazon ECR for SageMaker.

The engine is docker when its daemon answers, else podman (`--engine` picks one). The push logs in with an ECR
authorization token from boto3, passed to the engine on stdin, never on a command line or in a log.
"""

from __future__ import annotations

import argparse
import base64
import logging
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from launch import cli as launch_cli
from launch.errors import LaunchError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The build context: the folder holding the Dockerfile (its .dockerignore keeps everything else out)."""

REPOSITORY = "dialogsum-qlora"
ENGINES = ("docker", "podman")
PLATFORM = "linux/amd64"
"""SageMaker's GPU instances and the CUDA base image are x86-64: an image built on an ARM laptop must not be arm64."""

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY", re.IGNORECASE)


class ImageError(LaunchError):
    """Bad input or a failed step, reported as one line (exit 1)."""


# ----------------------------------------------------------------------------------------------
# The engine


def engine_answers(engine: str) -> bool:
    """True when the engine is installed and can run containers (a docker CLI without a daemon cannot)."""
    if not shutil.which(engine):
        return False
    try:
        done = subprocess.run([engine, "info"], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def choose_engine(requested: str | None = None, *, must_work: bool = True) -> str:
    """The requested engine, else docker when its daemon answers, else podman. When nothing answers and the
    command is only printed (`must_work=False`), docker: the command is meant for another machine."""
    if requested:
        if must_work and not engine_answers(requested):
            raise ImageError(f"{requested} is not installed or cannot run containers here (try `{requested} info`)")
        return requested
    for engine in ENGINES:
        if engine_answers(engine):
            return engine
    if must_work:
        raise ImageError("no container engine answers: install docker (and start its daemon) or podman")
    return "docker"


def default_tag() -> str:
    """`dialogsum-qlora:<package version>`."""
    try:
        version = metadata.version("dialogsum-qlora")
    except metadata.PackageNotFoundError:
        version = "latest"
    return f"{REPOSITORY}:{version}"


def run_engine(cmd: list[str], *, stdin_text: str | None = None) -> None:
    """Runs one engine command with its output on the console; raises ImageError naming the step on failure."""
    log.info("running: %s", shlex.join(cmd))
    try:
        done = subprocess.run(cmd, input=stdin_text, text=True if stdin_text is not None else None)
    except OSError as e:
        raise ImageError(f"cannot run {cmd[0]}: {e}") from None
    if done.returncode != 0:
        raise ImageError(f"`{shlex.join(cmd[:2])}` failed with exit code {done.returncode} (its output is above)")


# ----------------------------------------------------------------------------------------------
# build


def parse_build_args(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs. Build args are stored in the image's history, so secret-looking names are refused."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ImageError(f"--build-arg {pair!r} must look like KEY=VALUE")
        if SECRET_NAME.search(key):
            raise ImageError(
                f"--build-arg {key} looks like a secret, and build args are readable in the image's history: "
                "pass tokens when the container runs (see `python -m launch docker --help`)"
            )
        out[key] = value
    return out


def build_command(
    engine: str,
    tag: str,
    *,
    context: Path = PROJECT_ROOT,
    base_image: str | None = None,
    build_args: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The engine's build command, for a Docker v2 single-platform manifest: SageMaker refuses OCI manifests and
    the OCI index that buildx's provenance attestation creates ("Unsupported manifest media type")."""
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        raise ImageError(f"no Dockerfile in {context}: run from the project checkout or pass --context")
    cmd = [engine, "build", "-f", str(dockerfile), "-t", tag, "--platform", PLATFORM]
    if engine == "podman":
        cmd += ["--format", "docker"]
    else:
        cmd += ["--provenance=false", "--output", "type=docker"]
    args = dict(build_args or {})
    if base_image:
        args["BASE_IMAGE"] = base_image
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    return cmd + list(extra or []) + [str(context)]


# ----------------------------------------------------------------------------------------------
# push


@dataclass
class Registry:
    host: str
    username: str
    password: str = field(repr=False)  # never in a log line or a traceback's locals


def ecr_client(region: str | None):
    import boto3  # the launch extra; imported here so `launch image build` works without it

    return boto3.client("ecr", region_name=region) if region else boto3.client("ecr")


def ensure_repository(ecr, name: str) -> str:
    """The repository's URI, creating the repository (scan on push) when it does not exist yet."""
    try:
        found = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        return found["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        log.info("creating ECR repository %s", name)
        created = ecr.create_repository(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}, imageTagMutability="MUTABLE"
        )
        return created["repository"]["repositoryUri"]


def registry_login(ecr) -> Registry:
    """ECR's authorization token is base64 `AWS:<password>`, valid 12 hours."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    host = data["proxyEndpoint"].removeprefix("https://").removeprefix("http://").rstrip("/")
    return Registry(host=host, username=username, password=password)


def push(engine: str, local_tag: str, repository: str, region: str | None) -> str:
    """Tags and pushes the local image to ECR; returns the pushed image's URI."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        ecr = ecr_client(region)
        repo_uri = ensure_repository(ecr, repository)
        registry = registry_login(ecr)
    except (BotoCoreError, ClientError) as e:
        raise ImageError(f"ECR: {e} (check your AWS credentials and region: `aws sts get-caller-identity`)") from None
    tag = local_tag.rsplit(":", 1)[1] if ":" in local_tag.rsplit("/", 1)[-1] else "latest"
    uri = f"{repo_uri}:{tag}"
    login = [engine, "login", "--username", registry.username, "--password-stdin", registry.host]
    run_engine(login, stdin_text=registry.password)
    run_engine([engine, "tag", local_tag, uri])
    run_engine([engine, "push", uri])
    return uri


# ----------------------------------------------------------------------------------------------
# Entry point

EPILOG = """examples:
  python -m launch image build
  python -m launch image build --base-image pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
  python -m launch image push --region us-east-1
  python -m launch sagemaker --image URI --config llama-3.2-3b-qlora   # URI as printed by push

Anything after `--` goes to the engine's build as is, e.g. `-- --network host`.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch image",
        description="Build the job's container image and push it to Amazon ECR for SageMaker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        allow_abbrev=False,
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="{build,push}")
    for name, help_text in (("build", "build the image"), ("push", "push a built image to ECR")):
        s = sub.add_parser(name, help=help_text, allow_abbrev=False)
        s.add_argument("--engine", choices=ENGINES, help="default: docker when its daemon answers, else podman")
        s.add_argument("--tag", default=default_tag(), help="local image name (default: %(default)s)")
    build = sub.choices["build"]
    build.add_argument("--base-image", help="a CUDA PyTorch runtime image (default: the Dockerfile's)")
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    build.add_argument("--context", type=Path, default=PROJECT_ROOT, help="folder with the Dockerfile")
    push_p = sub.choices["push"]
    push_p.add_argument("--repository", default=REPOSITORY, help="ECR repository name (default: %(default)s)")
    push_p.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    return p


def main(argv: list[str] | None = None) -> int:
    return launch_cli.execute(run, sys.argv[1:] if argv is None else argv)


def run(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = choose_engine(args.engine)
    if args.action == "build":
        cmd = build_command(
            engine,
            args.tag,
            context=args.context.resolve(),
            base_image=args.base_image,
            build_args=parse_build_args(args.build_arg),
            extra=extra,
        )
        run_engine(cmd)
        print(args.tag)
    else:
        if extra:
            raise ImageError("`push` takes no engine arguments after --")
        print(push(engine, args.tag, args.repository, args.region))
    return 0


if __name__ == "__main__":
    sys.exit(main())
