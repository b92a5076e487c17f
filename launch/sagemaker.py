"""`python -m launch sagemaker`: run the job as a SageMaker training job, follow it, fetch its run folder.

    python -m launch sagemaker --config llama-3.2-3b-qlora --instance ml.g5.xlarge --spot [key=value ...]
    python -m launch sagemaker status|logs|fetch|stop JOB

Everything that can be checked without spending money is checked first, all at once: the instance type, the
config's GPU memory fit on its GPU, spot timing, the region, the whole request against botocore's service model,
then the account's quota and the execution role (the SDK's own validation), all before anything is uploaded.
`--dry-run` prints the CreateTrainingJob request and a cost estimate without calling AWS. Imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from job import config as config_mod
from job import memory, tables
from launch import catalog, datareport, service_model
from launch import sagemaker_follow as follow_mod
from launch import sagemaker_request as req
from launch.sagemaker_follow import LaunchError

log = logging.getLogger("launch.sagemaker")

DEFAULT_PREFIX = "dialogsum-qlora"
MAX_RUN_LIMIT_H = 28 * 24  # CreateTrainingJob's MaxRuntimeInSeconds ceiling
ECR_IMAGE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^\s:]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$")
DEFAULT_SECRET_ID = "dialogsum-qlora/hf-token"
GATED_PREFIXES = ("meta-llama/", "mistralai/", "google/gemma")
COMMANDS = ("status", "logs", "fetch", "stop")
DEFAULT_VOLUME_GB = 100
NVME_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p5")
"""Instance families whose NVMe instance storage SageMaker uses instead of an EBS volume of --volume-size."""

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
    "Environment": "fix --hf-token-secret",
    "ResourceConfig": "fix --instance, --instance-count or --volume-size",
    "StoppingCondition": "fix --max-run or --max-wait",
    "OutputDataConfig": "fix --output",
    "CheckpointConfig": "fix --output or --name",
    "InputDataConfig": "fix --output or the data set / model path",
    "AlgorithmSpecification": "fix --image",
}

EPILOG = """examples:
  python -m launch sagemaker --config llama-3.2-3b-qlora --instance ml.g5.xlarge --spot --dry-run
  python -m launch sagemaker --config llama-3.2-3b-qlora --instance ml.g5.xlarge --spot \\
      --role arn:aws:iam::123456789012:role/SageMakerTraining --hf-token-secret dialogsum-qlora/hf-token
  python -m launch sagemaker status JOB | logs JOB | fetch JOB --to ./runs | stop JOB

Anything after the options is a config override (key.sub=value), as for `python -m job train`.
One-time AWS setup (role, bucket, secret, quota): docs/sagemaker.md."""


def submit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch sagemaker",
        description="Run the job as a SageMaker training job (SDK v3 ModelTrainer), follow it and show its ROUGE.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--config", required=True, help="preset name or YAML file, as for `python -m job train`")
    p.add_argument("--instance", required=True, metavar="TYPE", help="GPU instance type, e.g. ml.g5.xlarge")
    p.add_argument("--region", help="AWS region (default: your AWS configuration's)")
    p.add_argument("--role", help="execution role ARN or name (default: the SDK's resolution, see docs)")
    p.add_argument(
        "--output", metavar="S3_URI", help="s3://bucket/prefix for everything (default: the SageMaker default bucket)"
    )
    p.add_argument(
        "--spot", action="store_true", help="managed spot training (checkpoints per run; resumes after interruption)"
    )
    p.add_argument(
        "--max-run", type=float, default=24.0, metavar="HOURS", help="stop the job after this long (default 24)"
    )
    p.add_argument(
        "--max-wait",
        type=float,
        metavar="HOURS",
        help="spot: give up after this long including waits (default 2 x max-run)",
    )
    p.add_argument(
        "--volume-size",
        type=int,
        metavar="GB",
        help=f"EBS disk per instance (default {DEFAULT_VOLUME_GB}); ignored on NVMe instances (g4dn, g5, g6, p4d, ...)",
    )
    p.add_argument("--instance-count", type=int, default=1, metavar="N", help="instances (the job trains on one: 1)")
    p.add_argument(
        "--image",
        default="dlc",
        metavar="dlc|ECR_URI",
        help="`dlc` (Hugging Face PyTorch DLC + our source) or our image in ECR",
    )
    p.add_argument("--hf-token-secret", metavar="ID", help="Secrets Manager id or ARN holding the Hugging Face token")
    p.add_argument("--create-secret", action="store_true", help="store the local HF_TOKEN in --hf-token-secret first")
    p.add_argument("--tags", nargs="+", default=[], metavar="KEY=VALUE", help="extra tags on the training job")
    p.add_argument("--name", help="job name prefix (default dialogsum-<config hash>); SageMaker adds a timestamp")
    p.add_argument(
        "--ignore-memory-check", action="store_true", help="launch even if the memory estimate says it won't fit"
    )
    p.add_argument("--dry-run", action="store_true", help="print the request and a cost estimate; call no AWS API")
    p.add_argument(
        "--wait", action=argparse.BooleanOptionalAction, default=True, help="follow the job to its end (default)"
    )
    return p


def command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch sagemaker", description="Follow a SageMaker training job.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("status", "status, transitions and failure reason"),
        ("logs", "the job's CloudWatch log lines"),
        ("fetch", "download the run folder"),
        ("stop", "stop the job"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("job", metavar="JOB", help="training job name")
        s.add_argument("--region", help="AWS region (default: your AWS configuration's)")
        if name == "logs":
            s.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        if name == "fetch":
            s.add_argument(
                "--to", type=Path, default=Path("runs"), metavar="DIR", help="parent folder (default ./runs)"
            )
    return p


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


def _uses_secret(args: argparse.Namespace) -> str | None:
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
    return problems + _parse_tags(args.tags)[1]


def _gpu_checks(args: argparse.Namespace, cfg: config_mod.Config) -> tuple[list[str], list[str]]:
    """The instance type exists and its GPU can hold the config (bf16, memory)."""
    try:
        inst = catalog.instance(args.instance)
    except catalog.UnknownInstance as e:
        return [str(e)], []
    problems, warnings = [], []
    gpu = inst.gpu_spec
    if cfg.model.compute_dtype == "bfloat16" and not gpu.bf16:
        problems.append(f"model.compute_dtype=bfloat16: the {gpu.name} has no bf16; use auto or float16")
    fit = memory.fit_message(cfg, gpu.name, gpu.usable_gb)
    if fit and not args.ignore_memory_check:
        problems.append(f"{fit} (or pass --ignore-memory-check)")
    elif fit:
        warnings.append(fit)
    if args.volume_size is not None and inst.name.split(".")[1] in NVME_FAMILIES:
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
    if cfg.model.name.startswith(GATED_PREFIXES) and not _uses_secret(args):
        warnings.append(
            f"{cfg.model.name} is gated on the Hugging Face Hub: pass --hf-token-secret ID "
            "(and --create-secret to store your local HF_TOKEN there)"
        )
    return problems, warnings


def check(args: argparse.Namespace, cfg: config_mod.Config) -> tuple[list[str], list[str]]:
    """(problems, warnings) found without AWS: every problem is reported at once."""
    gpu_problems, gpu_warnings = _gpu_checks(args, cfg)
    config_problems, config_warnings = _config_notes(args, cfg)
    return gpu_problems + _option_problems(args) + config_problems, gpu_warnings + config_warnings


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


def job_config(cfg: config_mod.Config, output: str) -> config_mod.Config:
    """The config the job runs with: publishes to <output>/runs unless the user chose s3:// or hf:// already."""
    import dataclasses

    if cfg.output.uri.startswith(("s3://", "hf://")):
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
    found = service_model.problems("sagemaker", "CreateTrainingJob", request, PLACEHOLDERS)
    fixes = [FIELD_FIXES.get(re.split(r"[ .\[]", line.split(" ", 1)[1], maxsplit=1)[0]) for line in found]
    return [f"{line}; {fix}" if fix else line for line, fix in zip(found, fixes, strict=True)]


def shown_secret(args: argparse.Namespace, region: str) -> str | None:
    """The secret's ARN as the dry run shows it: AWS adds a random suffix to a secret's name in its ARN."""
    secret = _uses_secret(args)
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
    cfg, channels = req.channels_for(job_config(cfg, output), output)
    max_run = _hours(args.max_run)
    max_wait = (_hours(args.max_wait) if args.max_wait else 2 * max_run) if args.spot else None
    tags = req.tags_for(cfg, args.config) | _parse_tags(args.tags)[0]
    return req.Plan(
        cfg=cfg,
        config_name=args.config,
        region=region,
        instance_type=args.instance,
        instance_count=args.instance_count,
        image=req.default_image(region, args.instance) if args.image == "dlc" else args.image,
        own_image=args.image != "dlc",
        processes_per_node=catalog.instance(args.instance).gpu_count if args.image == "dlc" else 1,
        output=output.rstrip("/"),
        role=role,
        base_job_name=req.base_job_name(args.name, cfg),
        spot=args.spot,
        max_run_s=max_run,
        max_wait_s=min(max_wait, _hours(MAX_RUN_LIMIT_H)) if max_wait else None,
        volume_gb=DEFAULT_VOLUME_GB if args.volume_size is None else args.volume_size,
        environment={req.SECRET_ENV: secret} if secret else {},
        channels=channels,
        tags=tags,
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


# ----------------------------------------------------------------------------------------------------------------
# Output


def cost_lines(plan: req.Plan) -> list[str]:
    cfg, instance_type, spot, max_run_s = plan.cfg, plan.instance_type, plan.spot, plan.max_run_s
    est = catalog.estimate_cost(cfg, instance_type, spot, plan.instance_count, all_gpus=plan.distributed)
    w = est["work"]
    machines = f"{plan.instance_count} x {instance_type}" if plan.instance_count > 1 else instance_type
    gpus = f"{w['gpus']} x {est['gpu']}" if w["gpus"] > 1 else est["gpu"]
    lines = [
        f"estimate: ~{est['hours']:.2f} h on {machines} ({gpus}): training {w['train_hours']:.2f} h "
        f"({w['steps']} steps, {w['train_tokens']:,} tokens), validation {w['validation_hours']:.2f} h, "
        f"ROUGE generation {w['generation_hours']:.2f} h, startup {catalog.STARTUP_HOURS:.2f} h",
    ]
    if est["usd"] is not None:
        price = f"${est['on_demand_per_hour']:.3f}/h on demand" + (
            " (derived from EC2)" if est["price_derived"] else ""
        )
        if spot:
            lines.append(
                f"cost: ~${est['usd']:.2f} with spot (~{est['spot_discount']:.0%} off; ${est['on_demand_usd']:.2f} on demand), {price}"
            )
        else:
            lines.append(
                f"cost: ~${est['usd']:.2f} on demand ({price}; --spot typically ~{catalog.prices()['spot_discount']:.0%} less)"
            )
        lines.append(
            f"  prices {est['prices_region']} as of {est['prices_as_of']} (launch/prices.json), throughput figures are "
            f"estimates as of {w['estimates_as_of']}"
        )
    if not w["dataset_known"]:
        lines.append(f"  {cfg.data.dataset}: size unknown here, assumed DialogSum-sized")
    if est["hours"] * 3600 > max_run_s:
        lines.append(f"  warning: the estimate exceeds --max-run ({max_run_s / 3600:g} h): the job would be stopped")
    return lines


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def console_url(region: str, job_name: str) -> str:
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{job_name}"


# ----------------------------------------------------------------------------------------------------------------
# Commands


def _report(problems: list[str]) -> int:
    for problem in problems:
        _err(problem)
    return 2


def dry_run(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    region = region_of(args, dry_run=True)
    problems, shown = checked_preview(args, cfg, region)
    if problems or shown is None:
        return _report(problems)
    plan, request, job_name = shown
    refuse_secrets(request)
    print(json.dumps(request, indent=2))
    if plan.distributed:
        _note(
            f"torchrun: {plan.processes_per_node} process(es) per instance x {plan.instance_count} instance(s) "
            f"(SageMaker's torchrun driver starts {req.ENTRY_SCRIPT})"
        )
    for line in cost_lines(plan):
        _note(line)
    _note(f"run folder: {plan.cfg.output.uri}/{job_name}/")
    for line in datareport.report_lines(cfg):
        _note(line)
    if args.create_secret:
        _note(f"would store the local HF_TOKEN in Secrets Manager secret {_uses_secret(args)} ({region})")
    if not args.region:
        _note(f"region: {region} (pass --region to choose another)")
    _note("dry run: nothing was sent to AWS")
    return 0


def submit(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    import boto3

    region = region_of(args, dry_run=False)
    problems, _ = checked_preview(args, cfg, region)
    if problems:
        return _report(problems)
    boto = boto3.Session(region_name=region)
    inst = catalog.instance(args.instance)
    warning = follow_mod.check_quota(boto.client("service-quotas"), region, inst.name, args.instance_count, args.spot)
    if warning:
        _note(f"warning: {warning}")

    secret_id, secret = _uses_secret(args), None
    if secret_id:
        secrets = boto.client("secretsmanager")
        if args.create_secret:
            secret = follow_mod.store_secret(secrets, secret_id, os.environ["HF_TOKEN"])
            _note(f"stored HF_TOKEN in secret {secret}")
            _note("the execution role needs this permission (add it as an inline policy):")
            _note(json.dumps(follow_mod.role_policy_for_secret(secret), indent=2))
        else:
            secret = follow_mod.secret_arn(secrets, secret_id)

    if args.output:
        check_bucket(boto.client("s3"), args.output, region)
    session = sagemaker_session(boto, args.output)
    output = args.output.rstrip("/") if args.output else f"s3://{session.default_bucket()}/{DEFAULT_PREFIX}"
    plan = make_plan(args, cfg, region, output, resolve_role(args.role, session), secret)
    problems = request_problems(req.preview_request(plan, f"{plan.base_job_name}-{service_model.STAMP_PLACEHOLDER}"))
    if problems:
        return _report(problems)
    s3 = boto.client("s3")
    for channel in plan.channels:
        if not channel.source.startswith("s3://"):
            uploaded = follow_mod.upload_channel(s3, Path(channel.source), channel.s3_uri)
            _note(f"{channel.name}: {'uploaded' if uploaded else 'reusing'} {channel.s3_uri}")

    refuse_secrets(req.preview_request(plan, plan.base_job_name))
    boto.events.register("provide-client-params.sagemaker.CreateTrainingJob", _refuse_secrets_handler)
    boto.events.register("provide-client-params.sagemaker.CreateTrainingJob", _check_request_handler)
    job_name = create_job(plan, session)
    print(f"submitted {job_name}")
    tag_run(boto.client("sagemaker"), job_name)
    _note(f"console: {console_url(region, job_name)}")
    _note(f"run folder (when it completes): {follow_mod.run_folder_uri(_job_stub(plan, job_name))}")
    _note(f"follow: python -m launch sagemaker status {job_name} --region {region}")
    if not args.wait:
        return 0
    return watch(boto.client("sagemaker"), boto.client("logs"), boto.client("s3"), job_name)


def tag_run(sm: Any, job_name: str) -> None:
    """Tag the job with its run name, which the SDK stamps only at submission. The job runs either way."""
    from botocore.exceptions import ClientError

    try:
        arn = sm.describe_training_job(TrainingJobName=job_name)["TrainingJobArn"]
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "run", "Value": job_name}])
    except ClientError as e:
        _note(f"warning: could not tag the job with its run name ({e.response['Error']['Code']}); it runs regardless")


def _refuse_secrets_handler(params: dict[str, Any], **_: Any) -> None:
    refuse_secrets(params)


def _check_request_handler(params: dict[str, Any], **_: Any) -> None:
    """The request ModelTrainer really sends, checked once more against the service model."""
    problems = request_problems(params)
    if problems:
        raise LaunchError(" / ".join(problems))


def _job_stub(plan: req.Plan, job_name: str) -> dict[str, Any]:
    return {
        "TrainingJobName": job_name,
        "HyperParameters": plan.hyperparameters,
        "OutputDataConfig": {"S3OutputPath": plan.jobs_uri},
    }


def check_bucket(s3: Any, output: str, region: str) -> None:
    from botocore.exceptions import ClientError

    bucket = follow_mod.split_s3(output)[0]
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = e.response["Error"]["Code"]
        if code in ("404", "NoSuchBucket"):
            raise LaunchError(
                f"--output: bucket {bucket} does not exist; create it: aws s3 mb s3://{bucket} --region {region}"
            ) from None
        if code in ("403", "AccessDenied"):
            raise LaunchError(f"--output: no access to bucket {bucket} with your credentials (s3:ListBucket)") from None
        raise


def sagemaker_session(boto: Any, output: str | None):
    """A SageMaker session whose default bucket and prefix are --output, so code, drivers and checkpoints go there."""
    from sagemaker.core.helper.session_helper import Session

    if not output:
        # Resolve (and create) sagemaker-<region>-<account> without a prefix first: with a prefix the SDK probes a
        # missing bucket with ListObjectsV2, gets NoSuchBucket instead of 404, and never creates it.
        bucket = Session(boto_session=boto).default_bucket()
        return Session(boto_session=boto, default_bucket=bucket, default_bucket_prefix=DEFAULT_PREFIX)
    bucket, prefix = follow_mod.split_s3(output.rstrip("/"))
    return Session(boto_session=boto, default_bucket=bucket, default_bucket_prefix=prefix or None)


def role_error(message: str, role: str | None) -> str:
    """The SDK's role validation message in one line: what is wrong (the missing permissions by name) and the fix."""
    lines = message.strip().split("\n\n", 1)[0].splitlines() or ["no execution role could be resolved"]
    # "Required permissions: <every action>" (when nothing is known to be missing) is the whole policy: leave it to the docs.
    what = " ".join(line.strip() for line in lines if not line.startswith("Required permissions:")).rstrip(".")
    if "Missing permissions:" in what:
        fix = "add them to the role's policy (docs/sagemaker.md, step 1, has the whole policy)"
    elif "trust policy" in what:
        fix = "let sagemaker.amazonaws.com assume the role (its trust policy: docs/sagemaker.md, step 1)"
    elif role:
        fix = "grant the role the permissions above (docs/sagemaker.md, step 1)"
    else:
        fix = "pass --role NAME_OR_ARN (docs/sagemaker.md, step 1, creates one)"
    return f"{'--role ' + role if role else 'execution role'}: {what}; {fix}"


def resolve_role(role: str | None, session: Any) -> str:
    """The execution role's ARN, validated by the SDK's own check before anything is uploaded."""
    from sagemaker.train.defaults import TrainDefaults

    with _role_errors(role):
        return TrainDefaults.get_role(role=role or None, sagemaker_session=session)


@contextlib.contextmanager
def _role_errors(role: str | None) -> Iterator[None]:
    """The SDK's role errors (RoleValidationError; ValueError for a role that does not exist) as one line each."""
    from sagemaker.core.helper.iam_role_resolver import RoleValidationError

    try:
        yield
    except RoleValidationError as e:
        raise LaunchError(role_error(str(e), role)) from None
    except ValueError as e:
        if role:
            raise LaunchError(f"--role {role}: {str(e).splitlines()[0]}") from None
        raise


def create_job(plan: req.Plan, session: Any) -> str:
    with tempfile.TemporaryDirectory(prefix="dialogsum-sm-") as tmp:
        source = None if plan.own_image else req.stage_source(plan.cfg, Path(tmp))
        with _role_errors(plan.role):
            trainer = req.model_trainer(plan, session, source)
        trainer.train(wait=False, logs=False)
        return trainer._latest_training_job.training_job_name


def watch(sm: Any, logs: Any, s3: Any, job_name: str, poll_s: float = 15.0) -> int:
    """Follow to the end; print the ROUGE table on success, the reason and last log lines on failure."""
    job = follow_mod.follow(sm, logs, job_name, out=print, poll_s=poll_s)
    print(follow_mod.status_line(job))
    if job["TrainingJobStatus"] == "Completed":
        metrics = follow_mod.read_metrics(s3, job)
        if metrics is None:
            _note(f"no metrics.json at {follow_mod.run_folder_uri(job)}")
            return 1
        print(tables.summary(metrics))
        print(follow_mod.run_folder_uri(job))
        return 0
    if job["TrainingJobStatus"] == "Failed":
        lines = job.get("_last_log_lines") or follow_mod.last_log_lines(logs, job_name)
        if lines:
            print("last log lines:")
            for line in lines:
                print(f"  {line}")
    return 1


def run_command(argv: list[str]) -> int:
    args = command_parser().parse_args(argv)
    import boto3

    region = region_of(args, dry_run=False)
    boto = boto3.Session(region_name=region)
    sm = boto.client("sagemaker")
    if args.command == "status":
        job = follow_mod.describe(sm, args.job)
        print(follow_mod.status_line(job))
        for line in follow_mod._transitions(job):
            print(f"  {line}")
        if job["TrainingJobStatus"] == "Completed":
            metrics = follow_mod.read_metrics(boto.client("s3"), job)
            if metrics:
                print(tables.summary(metrics))
            print(follow_mod.run_folder_uri(job))
        elif job["TrainingJobStatus"] == "Failed":
            lines = follow_mod.last_log_lines(boto.client("logs"), args.job)
            if lines:
                print("last log lines:")
                for line in lines:
                    print(f"  {line}")
        return 0
    if args.command == "logs":
        if args.follow:
            job = follow_mod.follow(sm, boto.client("logs"), args.job, out=print)
            print(follow_mod.status_line(job))
            return 0
        job = follow_mod.describe(sm, args.job)  # a clear error for an unknown job
        lines = list(follow_mod.LogTail(boto.client("logs"), args.job).new_lines())
        for line in lines:
            print(line)
        if not lines:
            _note(f"no log lines yet ({follow_mod.status_line(job)})")
        return 0
    if args.command == "fetch":
        job = follow_mod.describe(sm, args.job)
        print(follow_mod.fetch(boto.client("s3"), job, args.to))
        return 0
    print(follow_mod.stop(sm, args.job))
    return 0


def _expected_sdk_notes(record: logging.LogRecord) -> bool:
    """Drop the SDK's note that hyperparameters are not command-line arguments: the job reads them from SM_HPS."""
    return not str(record.msg).startswith("Hyperparameters are set but are not passed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sagemaker.core.utils.utils").addFilter(_expected_sdk_notes)
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        if argv and argv[0] in COMMANDS:
            return run_command(argv)
        args, extra = submit_parser().parse_known_args(argv)
        unknown = [
            t for t in extra if t.startswith("--") and "." not in t.split("=")[0] and t[2:].split("=")[0] != "method"
        ]
        if unknown:
            _err(f"unknown option {unknown[0]} (config overrides look like key.sub=value); see --help")
            return 2
        try:
            cfg = config_mod.resolve(args.config, extra)
        except config_mod.ConfigError as e:
            for problem in e.problems:
                _err(problem)
            return 2
        problems, warnings = check(args, cfg)
        for problem in problems:
            _err(problem)
        if problems:
            return 2
        for warning in warnings:
            _note(f"warning: {warning}")
        return dry_run(args, cfg) if args.dry_run else submit(args, cfg)
    except LaunchError as e:
        _err(str(e))
        return 1
    except KeyboardInterrupt:
        _note("stopped following; the job goes on (`status JOB` shows it, `stop JOB` stops it)")
        return 130
    except NoCredentialsError:
        _err("no AWS credentials: run `aws configure` or `aws sso login`, or set AWS_PROFILE (or use --dry-run)")
        return 1
    except ClientError as e:
        error = e.response.get("Error", {})
        _err(f"AWS refused {e.operation_name}: {error.get('Code')}: {error.get('Message')}")
        return 1
    except BotoCoreError as e:
        _err(f"AWS: {e}")
        return 1
