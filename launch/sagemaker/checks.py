"""What the SageMaker launcher checks before anything is sent, all at once: the options, the instance type and the
config's GPU memory fit, spot timing, the region, and the whole CreateTrainingJob request against botocore's service
model; and the plan those checks are made on, with placeholders where only AWS can answer (the dry run's request).
No AWS call. Imports no torch.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
from typing import Any

from job import config as config_mod
from job import memory
from launch import catalog, service_model
from launch import tracking as launch_tracking
from launch.errors import LaunchError
from launch.sagemaker import account, budget
from launch.sagemaker import request as req

DEFAULT_PREFIX = "dialogsum-qlora"
MAX_RUN_LIMIT_H = 28 * 24  # CreateTrainingJob's MaxRuntimeInSeconds ceiling
ECR_IMAGE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^\s:]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$")
DEFAULT_SECRET_ID = "dialogsum-qlora/hf-token"
GATED_PREFIXES = ("meta-llama/", "mistralai/", "google/gemma")
DEFAULT_VOLUME_GB = 100

# What the dry run shows where only AWS can answer, and the valid value of the same form it is checked as.
ROLE_PLACEHOLDER = "<execution role: the SDK's default resolution (pass --role to choose)>"
SECRET_SUFFIX_PLACEHOLDER = "<SUFFIX>"
PLACEHOLDERS = service_model.PLACEHOLDER_VALUES | {
    ROLE_PLACEHOLDER: "arn:aws:iam::123456789012:role/SageMakerTraining",
    SECRET_SUFFIX_PLACEHOLDER: "AbC123",
}
# Which option or value a refused request field comes from.
FIELD_FIXES = {
    "TrainingJobName": "fix --name",
    "RoleArn": "fix --role",
    "HyperParameters": "the config values travel as hyperparameters: shorten or change that one",
    "Tags": f"fix --tags (a tag holds letters, digits, spaces and {' '.join('_.:/=+-@')} only)",
    "Environment": "fix --hf-token-secret, --mlflow or --mlflow-secret",
    "ResourceConfig": "fix --instance, --instance-count, --volume-size or --volume-kms-key",
    "StoppingCondition": "fix --max-run or --max-wait",
    "OutputDataConfig": "fix --output or --kms-key",
    "VpcConfig": "fix --subnets or --security-groups",
    "RetryStrategy": "fix --retries",
    "TensorBoardOutputConfig": "fix --output",
    "CheckpointConfig": "fix --output or --name",
    "InputDataConfig": "fix --output or the data set / model path",
    "AlgorithmSpecification": "fix --image",
}


# ----------------------------------------------------------------------------------------------------------------
# Building and checking the plan


def _hours(h: float) -> int:
    return int(round(h * 3600))


def _parse_tags(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """(tags, problems) from KEY=VALUE words."""
    tags, problems = {}, []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            problems.append(f"--tags {item!r}: write tags as KEY=VALUE")
        else:
            tags[key] = value
    return tags, problems


def uses_secret(args: argparse.Namespace) -> str | None:
    if args.hf_token_secret:
        return args.hf_token_secret
    return DEFAULT_SECRET_ID if args.create_secret else None


def _option_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.instance_count < 1:
        problems.append(f"--instance-count {args.instance_count}: must be at least 1")
    elif args.instance_count > 1 and args.image != "dlc":
        problems.append(
            f"--instance-count {args.instance_count}: several instances train under torchrun, which only the `dlc` "
            "image is started with; use --image dlc or one instance"
        )
    if args.budget is not None and args.budget <= 0:
        problems.append(f"--budget {args.budget:g}: give the most the job may cost, in USD (e.g. --budget 5)")
    if not 0 < args.max_run <= MAX_RUN_LIMIT_H:
        problems.append(f"--max-run {args.max_run:g}: must be between 0 and {MAX_RUN_LIMIT_H} hours")
    if args.max_wait is not None and not args.spot:
        problems.append("--max-wait only applies to --spot jobs")
    if args.spot and args.max_wait is not None and args.max_wait < args.max_run:
        problems.append(f"--max-wait {args.max_wait:g} h must be at least --max-run {args.max_run:g} h")
    if args.volume_size is not None and not 1 <= args.volume_size <= 16384:
        problems.append(f"--volume-size {args.volume_size}: must be 1-16384 GB")
    if args.image != "dlc" and not ECR_IMAGE.match(args.image):
        problems.append(
            f"--image {args.image!r}: SageMaker pulls training images from ECR; give "
            "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG (`python -m launch image push` pushes ours) or `dlc`"
        )
    if args.create_secret and not os.environ.get("HF_TOKEN"):
        problems.append("--create-secret stores the local HF_TOKEN: set HF_TOKEN in this shell first")
    if args.output and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", args.output):
        problems.append(f"--output {args.output!r}: give s3://bucket/prefix")
    if getattr(args, "model_s3", None):
        from launch.sagemaker import stage

        problems += [p for p in [stage.model_s3_problem(args.model_s3)] if p]
    return problems + _parse_tags(args.tags)[1] + launch_tracking.problems(args)


def _gpu_checks(args: argparse.Namespace, cfg: config_mod.Config) -> tuple[list[str], list[str]]:
    """The instance type exists and its GPU can hold the config (bf16, memory)."""
    try:
        inst = catalog.instance(args.instance)
    except catalog.UnknownInstance as e:
        return [str(e)], []
    problems, warnings = [], []
    if inst.gpu_count == 0:
        if cfg.train.require_gpu:
            problems.append(
                f"--instance {inst.name} has no GPU and the config sets train.require_gpu=true; use a GPU instance "
                f"(ml.g5.xlarge, ...), or {inst.name} with a config that trains on the CPU (--config test)"
            )
        return problems, warnings
    gpu = inst.gpu_spec
    if cfg.model.compute_dtype == "bfloat16" and not gpu.bf16:
        problems.append(f"model.compute_dtype=bfloat16: the {gpu.name} has no bf16; use auto or float16")
    fit = memory.fit_message(cfg, gpu.name, gpu.usable_gb)
    if fit and not args.ignore_memory_check:
        problems.append(f"{fit} (or pass --ignore-memory-check)")
    elif fit:
        warnings.append(fit)
    if args.volume_size is not None and account.has_nvme(inst.name):
        warnings.append(
            f"--volume-size {args.volume_size}: ignored on {inst.name}, whose NVMe instance storage (of a fixed size) "
            "holds /opt/ml; SageMaker provisions no EBS volume for it"
        )
    if inst.gpu_count > 1 and args.image != "dlc":
        warnings.append(
            f"{inst.name} has {inst.gpu_count} GPUs; our image runs one process, which trains on one of them "
            "(--image dlc trains on all under torchrun)"
        )
    try:
        memory.architecture(cfg.model.name)
    except memory.UnknownArchitecture:
        warnings.append(f"no memory estimate for {cfg.model.name} (its shape is unknown here); not checked")
    return problems, warnings


def _config_notes(args: argparse.Namespace, cfg: config_mod.Config) -> tuple[list[str], list[str]]:
    problems, warnings = [], []
    if cfg.output.run_name is not None:
        problems.append(
            "output.run_name: on SageMaker the run is named after the training job; use --name for its prefix"
        )
    if not cfg.output.uri.startswith(("s3://", "hf://")) and cfg.output.uri != config_mod.OutputConfig().uri:
        warnings.append(f"output.uri={cfg.output.uri} is a local folder; on SageMaker the run goes to <output>/runs")
    if cfg.model.name.startswith(GATED_PREFIXES) and not uses_secret(args) and not getattr(args, "model_s3", None):
        warnings.append(
            f"{cfg.model.name} is gated on the Hugging Face Hub: pass --hf-token-secret ID "
            "(and --create-secret to store your local HF_TOKEN there)"
        )
    return problems, warnings


def fill_defaults(args: argparse.Namespace, cfg: config_mod.Config) -> None:
    """--max-run follows the estimate (budget.default_max_run) when not given."""
    if args.max_run is None:
        all_gpus = args.image == "dlc"
        args.max_run = budget.default_max_run(cfg, args.instance, args.instance_count, all_gpus)
        args.max_run_defaulted = True


def _stopping(args: argparse.Namespace) -> tuple[int, int | None]:
    """(MaxRuntimeInSeconds, MaxWaitTimeInSeconds or None) from --max-run and --max-wait."""
    max_run = _hours(args.max_run)
    max_wait = (_hours(args.max_wait) if args.max_wait else 2 * max_run) if args.spot else None
    return max_run, min(max_wait, _hours(MAX_RUN_LIMIT_H)) if max_wait else None


def _budget_problems(args: argparse.Namespace) -> list[str]:
    if args.budget is None or args.budget <= 0 or not 0 < args.max_run <= MAX_RUN_LIMIT_H:
        return []  # a bad --budget or --max-run is reported by itself
    worst = budget.worst_case(args.instance, args.instance_count, *_stopping(args))
    problem = budget.budget_problem(worst, args.budget)
    return [problem] if problem else []


def check(args: argparse.Namespace, cfg: config_mod.Config) -> tuple[list[str], list[str]]:
    """(problems, warnings) found without AWS: every problem is reported at once."""
    gpu_problems, gpu_warnings = _gpu_checks(args, cfg)
    config_problems, config_warnings = _config_notes(args, cfg)
    account_problems = account.problems(
        account.from_args(args),
        cfg,
        args.instance,
        args.image,
        uses_secret(args),
        getattr(args, "model_s3", None),
        launch_tracking.uri_of(args),
    )
    problems = gpu_problems + _option_problems(args) + config_problems + account_problems
    if not gpu_problems:  # an unknown instance has no price
        problems += _budget_problems(args)
    return problems, gpu_warnings + config_warnings + account.notes(account.from_args(args), args.instance)


def region_of(args: argparse.Namespace, dry_run: bool) -> str:
    if args.region:
        return args.region
    import boto3

    region = boto3.Session().region_name
    if region:
        return region
    if dry_run:
        return "us-east-1"
    raise LaunchError("no AWS region: pass --region (e.g. --region us-east-1) or set AWS_DEFAULT_REGION")


def job_config(cfg: config_mod.Config, output: str, acct: account.Account) -> config_mod.Config:
    """The config the job runs with: publishes to <output>/runs unless the user chose s3:// or hf:// already, or
    the job has no network (its run folder then comes back as SageMaker's model output)."""
    import dataclasses

    cfg = account.job_config(acct, cfg)
    if cfg.output.uri.startswith(("s3://", "hf://")) or acct.network_isolation:
        return cfg
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, uri=f"{output}/runs"))


def region_problem(region: str, given: bool) -> str | None:
    """A region botocore does not know SageMaker in (`us-est-1`), named before the SDK's image lookup fails on it."""
    import boto3

    session = boto3.Session()
    known = {r for p in session.get_available_partitions() for r in session.get_available_regions("sagemaker", p)}
    if region in known:
        return None
    where = "--region" if given else "region (from your AWS configuration)"
    close = difflib.get_close_matches(region, sorted(known), n=2)
    return (
        f"{where} {region}: not a region SageMaker runs in (regions look like us-east-1, eu-west-2, ap-southeast-1)"
        + (f"; did you mean {' or '.join(close)}?" if close else "")
    )


def request_problems(request: dict[str, Any]) -> list[str]:
    """What the service model refuses in a CreateTrainingJob request, each line saying which option to fix."""
    return service_model.problems_with_fixes("sagemaker", "CreateTrainingJob", request, FIELD_FIXES, PLACEHOLDERS)


def shown_secret(args: argparse.Namespace, region: str) -> str | None:
    """The secret's ARN as the dry run shows it: AWS adds a random suffix to a secret's name in its ARN."""
    secret = uses_secret(args)
    if secret is None or secret.startswith("arn:"):
        return secret
    return f"arn:aws:secretsmanager:{region}:{service_model.ACCOUNT_PLACEHOLDER}:secret:{secret}-{SECRET_SUFFIX_PLACEHOLDER}"


def preview(args: argparse.Namespace, cfg: config_mod.Config, region: str) -> tuple[req.Plan, dict[str, Any], str]:
    """The plan, request and job name with placeholders where only AWS can answer: what --dry-run prints."""
    account = service_model.ACCOUNT_PLACEHOLDER
    output = (args.output or f"s3://sagemaker-{region}-{account}/{DEFAULT_PREFIX}").rstrip("/")
    if args.role:
        role = args.role if args.role.startswith("arn:") else f"arn:aws:iam::{account}:role/{args.role}"
    else:
        role = ROLE_PLACEHOLDER
    plan = make_plan(args, cfg, region, output, role, shown_secret(args, region))
    job_name = f"{plan.base_job_name}-{service_model.STAMP_PLACEHOLDER}"
    return plan, req.preview_request(plan, job_name), job_name


def checked_preview(
    args: argparse.Namespace, cfg: config_mod.Config, region: str
) -> tuple[list[str], tuple[req.Plan, dict[str, Any], str] | None]:
    """(problems, preview): the region, and the whole request against the service model, before anything is sent."""
    problem = region_problem(region, given=bool(args.region))
    if problem:
        return [problem], None
    try:
        shown = preview(args, cfg, region)
    except ValueError as e:  # the SDK's image table has no Hugging Face DLC there
        return [f"--image dlc in {region}: {str(e).splitlines()[0]}; push our image there and pass --image URI"], None
    return request_problems(shown[1]), shown


def make_plan(
    args: argparse.Namespace, cfg: config_mod.Config, region: str, output: str, role: str, secret: str | None
) -> req.Plan:
    """`secret`: the Hugging Face token secret's ARN, which the job reads in the secret's own region."""
    acct = account.from_args(args)
    cfg, channels = req.channels_for(job_config(cfg, output, acct), output, getattr(args, "model_s3", None))
    max_run, max_wait = _stopping(args)
    inst = catalog.instance(args.instance)
    tags = req.tags_for(cfg, args.config) | _parse_tags(args.tags)[0]
    return req.Plan(
        cfg=cfg,
        config_name=args.config,
        region=region,
        instance_type=args.instance,
        instance_count=args.instance_count,
        image=req.default_image(region, args.instance) if args.image == "dlc" else args.image,
        own_image=args.image != "dlc",
        processes_per_node=max(1, inst.gpu_count) if args.image == "dlc" else 1,
        output=output.rstrip("/"),
        role=role,
        base_job_name=req.base_job_name(args.name, cfg),
        spot=args.spot,
        max_run_s=max_run,
        max_wait_s=max_wait,
        volume_gb=DEFAULT_VOLUME_GB if args.volume_size is None else args.volume_size,
        environment=({req.SECRET_ENV: secret} if secret else {})
        | account.environment(acct)
        | launch_tracking.environment(args),
        channels=channels,
        tags=tags,
        account=acct,
    )


def local_tokens() -> list[str]:
    return [v for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN") if len(v := os.environ.get(k, "")) >= 8]


def refuse_secrets(request: Any) -> None:
    """Never send the local Hugging Face token: anyone who can describe the job would read it."""
    text = json.dumps(request, default=str)
    if any(token in text for token in local_tokens()):
        raise LaunchError(
            "the request would contain your HF_TOKEN (in a config value or tag); remove it and use --hf-token-secret"
        )
    if any(value in text for value in launch_tracking.local_credentials()):
        raise LaunchError(
            "the request would contain your MLflow credential (MLFLOW_TRACKING_TOKEN, _USERNAME or _PASSWORD); remove "
            "it and use --mlflow-secret"
        )
