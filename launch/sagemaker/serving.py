"""What serving a finished run on SageMaker needs, shared by `deploy` (a real-time endpoint) and `transform` (Batch
Transform): the run folder in S3 and what it holds, the SageMaker model (our image, the run folder as uncompressed
model data, the Hugging Face token by its secret's ARN), timeouts from the model's size, names and tags, the hourly
price, and every request checked against botocore's service model. Imports no torch.

The image serves SageMaker's inference contract (`docker run IMAGE serve`: `GET /ping`, `POST /invocations` on
port 8080) with the model read from `/opt/ml/model`, where SageMaker places the model data: the run folder as it
is, no `model.tar.gz`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from job import config as config_mod
from job import memory, runtime, secrets
from job.preflight import HUB_BYTES_PER_PARAM
from launch import catalog, service_model
from launch.errors import BadInput, LaunchError
from launch.sagemaker import account, follow, stage
from launch.sagemaker.checks import GATED_PREFIXES, PLACEHOLDERS, refuse_secrets
from launch.sagemaker.request import PROJECT, SECRET_ENV

MODEL_DIR = "/opt/ml/model"
"""Where SageMaker puts the model data in the serving container."""

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
"""Model, endpoint config, endpoint and transform job names alike (the service model's pattern)."""

ROLE_TYPE = "serving"
"""The SDK's role validation for hosting: the role may pull the image and read the model data."""

# Timeouts from the model's size. The rates are assumptions, deliberately low, not measurements: S3 to the instance,
# the Hugging Face Hub to the instance (the base model of an adapter run), and reading weights into GPU memory.
S3_BYTES_PER_S = 100e6
HUB_BYTES_PER_S = 50e6
LOAD_BYTES_PER_S = 200e6
STARTUP_S = 180
"""Image start, Python imports and CUDA's start before the first weight is read."""
MARGIN = 3
"""Each timeout is this many times the expected seconds (plus the fixed start)."""
TIMEOUT_RANGE = (60, 3600)
"""What ModelDataDownloadTimeoutInSeconds and ContainerStartupHealthCheckTimeoutInSeconds accept."""

FIELD_FIXES = {
    "ModelName": "fix --name",
    "EndpointName": "fix --name",
    "EndpointConfigName": "fix --name",
    "TransformJobName": "fix --name",
    "ExecutionRoleArn": "fix --role",
    "PrimaryContainer": "fix --image, --model-s3 or RUN",
    "Tags": "fix --name or RUN (tags hold the run's name and folder)",
    "ProductionVariants": "fix --instance or --instance-count",
    "TransformResources": "fix --instance or --kms-key",
    "TransformInput": "fix --input",
    "TransformOutput": "fix --output or --kms-key",
    "VpcConfig": "fix --subnets or --security-groups",
    "KmsKeyId": "fix --kms-key or --volume-kms-key",
}

BASE_CHANNEL = "base"
"""The AdditionalModelDataSources channel of a staged base model (`--model-s3`)."""


# ----------------------------------------------------------------------------------------------------------------
# The run folder


@dataclass
class Run:
    """A complete run folder in S3 and what deploying it needs to know."""

    uri: str
    """s3://bucket/prefix/NAME/, with the trailing slash S3Prefix model data needs."""
    name: str
    manifest: dict[str, Any]
    cfg: config_mod.Config
    metrics: dict[str, Any] | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    base_model: str = ""
    """The base model's public name: model.name, or for a run trained on staged weights (`channel:model`) the hub id
    its adapter records."""
    staged: str | None = None
    """`--model-s3`: the staged base model's S3 prefix, read as model data beside the run."""
    staged_bytes: int = 0

    @property
    def files(self) -> dict[str, int]:
        return {f["path"]: f["size"] for f in self.manifest.get("files", [])}

    @property
    def bytes(self) -> int:
        return sum(self.files.values())

    def holds(self, folder: str) -> bool:
        return any(path.startswith(f"{folder}/") for path in self.files)

    @property
    def full_model(self) -> bool:
        """The run holds whole weights (a merged model, `method=full`, a built-in base): no Hub download at start."""
        return self.holds("merged") or self.holds("base_model") or self.cfg.method == "full"

    @property
    def needs_base(self) -> bool:
        """The container loads a base model besides the run folder (an adapter on a Hub or staged base)."""
        return not (self.full_model or self.cfg.model.name.startswith("builtin:"))


def locate(sm: Any, s3: Any, run: str) -> str:
    """The S3 run folder of RUN: an s3:// URI as it is, or a training job's name through its job description."""
    if run.startswith("s3://"):
        return run.rstrip("/") + "/"
    if "://" in run or "/" in run or Path(run).exists():
        raise BadInput(
            f"RUN {run}: SageMaker serves a run folder from S3; give s3://BUCKET/PREFIX/runs/NAME/ or the training "
            "job's name (copy a local run up first: aws s3 sync RUN_DIR s3://BUCKET/PREFIX/runs/NAME/)"
        )
    job = follow.describe(sm, run)
    if job["TrainingJobStatus"] != "Completed":
        raise LaunchError(
            f"training job {run} is {job['TrainingJobStatus']}; only a completed run can be served "
            f"(`python -m launch sagemaker status {run}` says why)"
        )
    return follow.run_folder_uri(job, s3)


def _read(s3: Any, uri: str, name: str) -> bytes | None:
    bucket, prefix = follow.split_s3(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=f"{prefix}{name}")["Body"].read()
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchKey", "404", "NotFound"):
            return None
        if e.response["Error"]["Code"] == "NoSuchBucket":
            raise LaunchError(f"{uri}: no such bucket; check RUN") from None
        raise


def read_run(s3: Any, uri: str) -> Run:
    """The run folder's manifest, config, metrics and test predictions; refused unless complete and servable."""
    manifest = _read(s3, uri, "manifest.json")
    if manifest is None:
        raise LaunchError(
            f"{uri} holds no complete run (no manifest.json): give a finished run's folder "
            "(`python -m launch sagemaker status JOB` says whether its job completed)"
        )
    text = _read(s3, uri, "config.yaml")
    if text is None:
        raise LaunchError(f"{uri} has no config.yaml; it is not a run folder of this job")
    try:
        cfg = config_mod.build(yaml.safe_load(text) or {})
    except config_mod.ConfigError as e:
        raise LaunchError(f"{uri}config.yaml: {e.problems[0]}") from None
    metrics = _read(s3, uri, "metrics.json")
    predictions = _read(s3, uri, "predictions.jsonl") or b""
    run = Run(
        uri=uri,
        name=uri.rstrip("/").rsplit("/", 1)[-1],
        manifest=json.loads(manifest),
        cfg=cfg,
        metrics=json.loads(metrics) if metrics else None,
        predictions=[json.loads(line) for line in predictions.decode("utf-8").splitlines() if line.strip()],
    )
    if not (run.holds("adapter") or run.holds("merged") or cfg.method == "full"):
        raise LaunchError(f"{uri} holds neither adapter/ nor a model; it cannot be served")
    run.base_model = cfg.model.name
    if cfg.model.name.startswith(runtime.CHANNEL) and run.holds("adapter"):
        adapter = json.loads(_read(s3, uri, "adapter/adapter_config.json") or b"{}")
        run.base_model = adapter.get("base_model_name_or_path") or cfg.model.name
    return run


def use_staged(s3: Any, run: Run, uri: str) -> None:
    """`--model-s3 URI`: a complete staging of the run's base model (and its pinned commit), read as model data."""
    if not run.needs_base:
        raise BadInput(
            f"--model-s3 {uri}: {run.uri} holds its whole model (no base is loaded beside it); drop --model-s3"
        )
    record = stage.check_staged(s3, uri, run.base_model, run.cfg.model.revision)
    run.staged = uri.rstrip("/") + "/"
    run.staged_bytes = sum(f.get("size", 0) for f in record.get("files", []))


def run_problems(run: Run) -> list[str]:
    """What stops the serving container from loading the run's model."""
    name = run.cfg.model.name
    if not run.needs_base or run.staged or secrets.is_hub_id(name):
        return []
    if name.startswith(runtime.CHANNEL):
        return [
            f"the run's base model came staged ({name}, {run.base_model}); pass --model-s3 with the URI "
            f"`python -m launch sagemaker {stage.COMMAND}` printed for it, which the container reads as model data"
        ]
    return [
        f"the run's base model {name} is a folder on the training instance, which the serving container cannot read; "
        "retrain with a Hub model id (or output.merge=true, which puts the whole model in the run folder)"
    ]


def run_warnings(run: Run, secret: str | None) -> list[str]:
    name = run.cfg.model.name
    if run.needs_base and not run.staged and name.startswith(GATED_PREFIXES) and not secret:
        return [
            f"{name} is gated on the Hugging Face Hub and the container downloads it at start: pass "
            "--hf-token-secret ID (the secret the training launch used)"
        ]
    return []


# ----------------------------------------------------------------------------------------------------------------
# Sizes and timeouts


def hub_bytes(run: Run) -> int:
    """Bytes of base weights the container downloads from the Hub at start (none when the run holds the model)."""
    if not run.needs_base or run.staged or not secrets.is_hub_id(run.cfg.model.name):
        return 0
    try:
        arch = memory.architecture(run.cfg.model.name)
    except memory.UnknownArchitecture:
        return int(catalog.REFERENCE_PARAMS * 2)
    return int(memory.parameter_counts(arch)["total"] * HUB_BYTES_PER_PARAM.get(arch["kind"], 2))


def _clamp(seconds: float) -> int:
    low, high = TIMEOUT_RANGE
    return int(min(high, max(low, round(seconds))))


def timeouts(run: Run) -> dict[str, int]:
    """ModelDataDownloadTimeoutInSeconds (the run folder from S3) and ContainerStartupHealthCheckTimeoutInSeconds
    (the base from the Hub, every weight read, until `/ping` answers), each MARGIN times what the assumed rates
    give, within what the service accepts."""
    hub, data = hub_bytes(run), run.bytes + run.staged_bytes
    download = 60 + MARGIN * data / S3_BYTES_PER_S
    startup = STARTUP_S + MARGIN * (hub / HUB_BYTES_PER_S + (hub + data) / LOAD_BYTES_PER_S)
    return {
        "ModelDataDownloadTimeoutInSeconds": _clamp(download),
        "ContainerStartupHealthCheckTimeoutInSeconds": _clamp(startup),
    }


def size_line(run: Run) -> str:
    def gb(size: int) -> str:
        return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"

    hub = hub_bytes(run)
    line = f"model: run folder {gb(run.bytes)} ({len(run.files)} files) as model data"
    if hub:
        line += f", base {run.cfg.model.name} ~{gb(hub)} from the Hugging Face Hub at start"
    if run.staged:
        line += (
            f", base {run.base_model} {gb(run.staged_bytes)} staged at {run.staged} as model data "
            f"(AdditionalModelDataSources `{BASE_CHANNEL}`), no Hugging Face token"
        )
    return line


# ----------------------------------------------------------------------------------------------------------------
# Names, image, role


def resource_name(given: str | None, run: Run, suffix: str = "") -> str:
    """`--name`, else the run's name: letters, digits and `-` only, at most 63 characters."""
    base = re.sub(r"[^a-zA-Z0-9]+", "-", given or run.name).strip("-")
    return (base[: 63 - len(suffix)].rstrip("-") + suffix) if base else ""


def name_problems(name: str, option: str = "--name") -> list[str]:
    if NAME_PATTERN.match(name):
        return []
    return [f"{option} {name!r}: SageMaker names hold letters, digits and '-' (not first or last), 1-63 characters"]


def tags(run: Run) -> list[dict[str, str]]:
    found = {"project": PROJECT, "run": run.name, "run-folder": run.uri}
    return [{"Key": k, "Value": service_model.tag_safe(v)[:256]} for k, v in found.items()]


def default_image(account: str, region: str) -> str:
    """Our image as `python -m launch image push` pushes it: <account>.dkr.ecr.<region>.amazonaws.com/dialogsum-qlora:<version>."""
    from launch import image

    return f"{account}.dkr.ecr.{region}.amazonaws.com/{image.default_tag()}"


def check_image(ecr: Any, uri: str, account: str, region: str) -> None:
    """An image of this account and region is in ECR before SageMaker is asked to pull it."""
    found = re.match(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)(?::(.+))?$", uri)
    if not found or found.group(1) != account or found.group(2) != region:
        return  # another account's or region's registry: SageMaker's pull is the check
    repository, tag = found.group(3), found.group(4) or "latest"
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as e:
        if e.response["Error"]["Code"] in ("RepositoryNotFoundException", "ImageNotFoundException"):
            raise LaunchError(
                f"--image {uri}: not in ECR; push our image first: python -m launch image push --region {region}"
            ) from None
        raise


def resolve_role(role: str | None, boto: Any) -> str:
    """The execution role's ARN, validated for serving by the SDK's own check (pull the image, read the model)."""
    from sagemaker.core.helper.iam_role_resolver import resolve_and_validate_role
    from sagemaker.core.helper.session_helper import Session

    from launch.sagemaker.cli import _role_errors

    with _role_errors(role):
        return resolve_and_validate_role(
            role or None, role_type=ROLE_TYPE, sagemaker_session=Session(boto_session=boto)
        )


def shown_role(role: str | None) -> str:
    from launch.sagemaker.checks import ROLE_PLACEHOLDER

    if not role:
        return ROLE_PLACEHOLDER
    return role if role.startswith("arn:") else f"arn:aws:iam::{service_model.ACCOUNT_PLACEHOLDER}:role/{role}"


# ----------------------------------------------------------------------------------------------------------------
# Requests


def model_request(
    name: str, run: Run, image: str, role: str, secret: str | None, acct: account.Account | None = None
) -> dict[str, Any]:
    """CreateModel: our image with the run folder as uncompressed model data under /opt/ml/model, and a staged base
    (`--model-s3`) beside it as AdditionalModelDataSources, which the server loads instead of the Hub's. The Hugging
    Face token travels as its secret's ARN only, which the container reads as the training job does
    (job/secrets.py). The account options add the VPC and network isolation."""
    acct = acct or account.Account()
    container: dict[str, Any] = {
        "Image": image,
        "Mode": "SingleModel",
        "ModelDataSource": stage.model_data_source(run.uri),
    }
    environment = account.environment(acct)
    if run.staged:
        container["AdditionalModelDataSources"] = [stage.additional_model_data_source(run.staged, BASE_CHANNEL)]
        environment[runtime.BASE_MODEL_ENV] = str(runtime.ADDITIONAL_MODEL_DATA / BASE_CHANNEL)
    if secret:
        environment[SECRET_ENV] = secret
    if environment:
        container["Environment"] = environment
    request = {"ModelName": name, "ExecutionRoleArn": role, "PrimaryContainer": container, "Tags": tags(run)}
    fields = {"VpcConfig": account.vpc_config(acct), "EnableNetworkIsolation": account.network_isolation(acct)}
    return request | {k: v for k, v in fields.items() if v is not None}


def request_problems(operation: str, request: dict[str, Any]) -> list[str]:
    """What the service model refuses in one request, each line naming the option to fix."""
    return service_model.problems_with_fixes("sagemaker", operation, request, FIELD_FIXES, PLACEHOLDERS)


def checked(requests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The requests by operation, each checked against the service model and for the local token; raises BadInput."""
    problems = [line for op, request in requests.items() for line in request_problems(op, request)]
    if problems:
        raise BadInput(*problems)
    refuse_secrets(requests)
    return requests


def guard(boto: Any, operations: list[str]) -> None:
    """Check each request once more as botocore sends it: the service model and the local token."""

    def handler(params: dict[str, Any], model: Any, **_: Any) -> None:
        refuse_secrets(params)
        problems = request_problems(model.name, params)
        if problems:
            raise LaunchError(" / ".join(problems))

    for op in operations:
        boto.events.register(f"provide-client-params.sagemaker.{op}", handler, unique_id=f"{PROJECT}-check-{op}")


def exists(call: Any, **kwargs: Any) -> bool:
    """Whether a Describe* call finds the resource (SageMaker answers ValidationException for a missing one)."""
    try:
        call(**kwargs)
        return True
    except ClientError as e:
        if e.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return False
        raise


# ----------------------------------------------------------------------------------------------------------------
# Prices


def hourly_price(instance_type: str) -> float | None:
    return catalog.prices()["on_demand"].get(instance_type)


def price_note() -> str:
    table = catalog.prices()
    return (
        f"prices {table['region']} as of {table['as_of']} (job/prices.json: SageMaker's on-demand list prices per "
        "instance-hour as recorded for training; check the pricing page for hosting in your region)"
    )


def instance_problems(instance_type: str, count: int) -> list[str]:
    problems = []
    try:
        catalog.instance(instance_type)
    except catalog.UnknownInstance as e:
        problems.append(str(e))
    if count < 1:
        problems.append(f"--instance-count {count}: must be at least 1")
    return problems


def wait_for(
    describe: Callable[[], dict[str, Any]],
    status_key: str,
    terminal: Collection[str],
    name: str,
    out: Callable[[str], None],
    poll_s: float,
) -> dict[str, Any]:
    """Print each status change of an endpoint or a transform job until it is in a terminal one; return its last
    description."""
    last = None
    while True:
        described = describe()
        status = described[status_key]
        if status != last:
            out(f"[{status}] {name}")
            last = status
        if status in terminal:
            return described
        time.sleep(poll_s)
