"""`python -m launch sagemaker`: run the job as a SageMaker training job, follow it, fetch its run folder.

    python -m launch sagemaker --config llama-3.2-3b-qlora --instance ml.g5.xlarge --spot [key=value ...]
    python -m launch sagemaker status|logs|fetch|stop JOB
    python -m launch sagemaker tune --config NAME --instance TYPE --image ECR_URI --param KEY=A,B ...  (tune.py)
    python -m launch sagemaker deploy|transform RUN ... | invoke|delete ENDPOINT | endpoints   (serving_cli)
    python -m launch sagemaker stage-model MODEL_ID --revision SHA   # weights to S3 once (launch/sagemaker/stage.py)

Everything that can be checked without spending money is checked first, all at once (`checks`): the instance
type, the config's GPU memory fit on its GPU, spot timing, the region, the whole request against botocore's service
model; then the account's quota and the execution role (the SDK's own validation), all before anything is uploaded.
`--dry-run` prints the CreateTrainingJob request and a cost estimate without calling AWS. Imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from job import config as config_mod
from job import tables
from launch import catalog, datareport, service_model
from launch import cli as launch_cli
from launch import tracking as launch_tracking
from launch.errors import BadInput, Interrupted, LaunchError
from launch.sagemaker import account, budget, stage
from launch.sagemaker import follow as follow_mod
from launch.sagemaker import request as req
from launch.sagemaker.checks import (
    DEFAULT_PREFIX,
    DEFAULT_VOLUME_GB,
    check,
    checked_preview,
    fill_defaults,
    make_plan,
    refuse_secrets,
    region_of,
    request_problems,
    uses_secret,
)

log = logging.getLogger("launch.sagemaker")

COMMANDS = ("status", "logs", "fetch", "stop")

EPILOG = """examples:
  python -m launch sagemaker --config llama-3.2-3b-qlora --instance ml.g5.xlarge --spot --dry-run
  python -m launch sagemaker --config llama-3.2-3b-qlora --instance ml.g5.xlarge --spot \\
      --role arn:aws:iam::123456789012:role/SageMakerTraining --hf-token-secret dialogsum-qlora/hf-token
  python -m launch sagemaker status JOB | logs JOB | fetch JOB --to ./runs | stop JOB
  python -m launch sagemaker tune --help      (hyperparameter search on validation ROUGE: docs/tuning.md)
  python -m launch sagemaker deploy RUN --instance ml.g5.xlarge | invoke ENDPOINT --input dialogues.jsonl
  python -m launch sagemaker endpoints | delete ENDPOINT | transform RUN --input s3://... --instance ml.g5.xlarge
  python -m launch sagemaker stage-model meta-llama/Llama-3.2-3B-Instruct --revision SHA   # then --model-s3 URI

Anything after the options is a config override (key.sub=value), as for `python -m job train`.
One-time AWS setup (role, bucket, secret, quota): docs/sagemaker.md. Serving: docs/serving-sagemaker.md."""


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
        "--max-run",
        type=float,
        metavar="HOURS",
        help=f"stop the job after this long (default {budget.MAX_RUN_FACTOR:g} x the estimate, at least "
        f"{budget.MIN_MAX_RUN_H:g} h)",
    )
    p.add_argument(
        "--budget", type=float, metavar="USD", help="refuse to launch when the worst case (see --dry-run) costs more"
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
    p.add_argument(
        "--model-s3",
        metavar="S3_URI",
        help=f"weights staged by `{stage.COMMAND}`: the job reads them as its `model` channel, with no Hub token",
    )
    p.add_argument("--create-secret", action="store_true", help="store the local HF_TOKEN in --hf-token-secret first")
    launch_tracking.add_option(p, secret_option=True)
    p.add_argument("--tags", nargs="+", default=[], metavar="KEY=VALUE", help="extra tags on the training job")
    p.add_argument("--name", help="job name prefix (default dialogsum-<config hash>); SageMaker adds a timestamp")
    p.add_argument(
        "--ignore-memory-check", action="store_true", help="launch even if the memory estimate says it won't fit"
    )
    p.add_argument("--dry-run", action="store_true", help="print the request and a cost estimate; call no AWS API")
    p.add_argument(
        "--wait", action=argparse.BooleanOptionalAction, default=True, help="follow the job to its end (default)"
    )
    account.add_options(p)
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
            f"  prices {est['prices_region']} as of {est['prices_as_of']} (job/prices.json), throughput figures are "
            f"estimates as of {w['estimates_as_of']}"
        )
    if not w["dataset_known"]:
        lines.append(f"  {cfg.data.dataset}: size unknown here, assumed DialogSum-sized")
    if est["hours"] * 3600 > max_run_s:
        lines.append(f"  warning: the estimate exceeds --max-run ({max_run_s / 3600:g} h): the job would be stopped")
    return lines


def guard_lines(plan: req.Plan, args: argparse.Namespace) -> list[str]:
    """The limits SageMaker stops the job at, what that costs at most, and the --budget it is held to."""
    worst = budget.worst_case(plan.instance_type, plan.instance_count, plan.max_run_s, plan.max_wait_s)
    lines = []
    if getattr(args, "max_run_defaulted", False):
        lines.append(
            f"--max-run {args.max_run:g} h: {budget.MAX_RUN_FACTOR:g} x the estimate (at least "
            f"{budget.MIN_MAX_RUN_H:g} h); pass --max-run to choose"
        )
    within = f"; within --budget ${args.budget:g}" if args.budget is not None else " (--budget USD refuses more)"
    return lines + [worst.line() + within]


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def console_url(region: str, job_name: str) -> str:
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{job_name}"


# ----------------------------------------------------------------------------------------------------------------
# Commands


def dry_run(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    region = region_of(args, dry_run=True)
    problems, shown = checked_preview(args, cfg, region)
    if problems or shown is None:
        raise BadInput(*problems)
    plan, request, job_name = shown
    refuse_secrets([request, plan.cfg.to_dict()])  # the config also travels as config.yaml in the code channel
    print(json.dumps(request, indent=2))
    if not plan.own_image:
        code_channel_notes(plan, request)
    if plan.distributed:
        _note(
            f"torchrun: {plan.processes_per_node} process(es) per instance x {plan.instance_count} instance(s) "
            f"(SageMaker's torchrun driver starts {req.ENTRY_SCRIPT})"
        )
    for line in cost_lines(plan) + guard_lines(plan, args):
        _note(line)
    _note(f"run folder: {follow_mod.run_folder_uri(_job_stub(plan, job_name))}")
    _note(stage.source_line(cfg.model.name, args.model_s3, uses_secret(args), plan.channels))
    for line in datareport.report_lines(cfg):
        _note(line)
    if args.create_secret:
        _note(f"would store the local HF_TOKEN in Secrets Manager secret {uses_secret(args)} ({region})")
    tracking_notes(args, region)
    if not args.region:
        _note(f"region: {region} (pass --region to choose another)")
    _note("dry run: nothing was sent to AWS")
    return 0


def tracking_notes(args: argparse.Namespace, region: str) -> None:
    """Where the job tracks its run, and what its execution role needs for that."""
    uri = launch_tracking.uri_of(args)
    if not uri:
        return
    _note(f"MLflow: the job tracks its run to {uri} (Environment {launch_tracking.job_tracking.URI_ENV})")
    policy = launch_tracking.role_policy(uri, region, getattr(args, "mlflow_secret", None))
    if policy:
        _note("the execution role needs these permissions for it (add them as an inline policy):")
        _note(json.dumps(policy, indent=2))


def code_channel_notes(plan: req.Plan, request: dict[str, Any]) -> None:
    """What the DLC job gets besides the request: its whole config and the versions it installs."""
    files = req.code_channel_files(plan.cfg)
    code = next(c for c in request["InputDataConfig"] if c["ChannelName"] == "code")
    _note(f"code channel {code['DataSource']['S3DataSource']['S3Uri']}: job/, {', '.join(files)}")
    _note(f"{req.CONFIG_FILE} (the job's whole config on the DLC; no hyperparameters):")
    for line in files[req.CONFIG_FILE].splitlines():
        _note(f"  {line}")
    _note(f"{req.REQUIREMENTS_FILE} (installed at start, the image's pins; torch stays the DLC's {req.DLC_TORCH}):")
    for line in files[req.REQUIREMENTS_FILE].splitlines():
        _note(f"  {line}")


def submit(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    import boto3

    region = region_of(args, dry_run=False)
    problems, _ = checked_preview(args, cfg, region)
    if problems:
        raise BadInput(*problems)
    boto = boto3.Session(region_name=region)
    inst = catalog.instance(args.instance)
    warning = follow_mod.check_quota(boto.client("service-quotas"), region, inst.name, args.instance_count, args.spot)
    if warning:
        _note(f"warning: {warning}")

    secret_id, secret = uses_secret(args), None
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
    if args.model_s3:
        stage.check_staged(boto.client("s3"), args.model_s3, cfg.model.name, cfg.model.revision)
    session = sagemaker_session(boto, args.output)
    output = args.output.rstrip("/") if args.output else f"s3://{session.default_bucket()}/{DEFAULT_PREFIX}"
    plan = make_plan(args, cfg, region, output, resolve_role(args.role, session), secret)
    problems = request_problems(req.preview_request(plan, f"{plan.base_job_name}-{service_model.STAMP_PLACEHOLDER}"))
    if problems:
        raise BadInput(*problems)
    s3 = boto.client("s3")
    for channel in plan.channels:
        if not channel.source.startswith("s3://"):
            uploaded = follow_mod.upload_channel(s3, Path(channel.source), channel.s3_uri)
            _note(f"{channel.name}: {'uploaded' if uploaded else 'reusing'} {channel.s3_uri}")

    refuse_secrets([req.preview_request(plan, plan.base_job_name), plan.cfg.to_dict()])
    boto.events.register("provide-client-params.sagemaker.CreateTrainingJob", _refuse_secrets_handler)
    boto.events.register("provide-client-params.sagemaker.CreateTrainingJob", _check_request_handler)
    tracking_notes(args, region)
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
        "HyperParameters": {"output.uri": plan.cfg.output.uri},
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
            _note(f"no metrics.json at {follow_mod.run_folder_uri(job, s3)}")
            return 1
        print(tables.summary(metrics))
        print(follow_mod.run_folder_uri(job, s3))
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
            s3 = boto.client("s3")
            metrics = follow_mod.read_metrics(s3, job)
            if metrics:
                print(tables.summary(metrics))
            print(follow_mod.run_folder_uri(job, s3))
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
    """Drop the SDK's note that hyperparameters are not command-line arguments: the job reads them itself."""
    return not str(record.msg).startswith("Hyperparameters are set but are not passed")


def main(argv: list[str] | None = None) -> int:
    return launch_cli.execute(run, sys.argv[1:] if argv is None else argv)


def run(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sagemaker.core.utils.utils").addFilter(_expected_sdk_notes)
    with _aws_errors():
        if argv and argv[0] in COMMANDS:
            return run_command(argv)
        if argv and argv[0] == "tune":
            from launch.sagemaker import tune

            return tune.run(argv[1:])
        from launch.sagemaker import serving_cli

        if argv and argv[0] in serving_cli.COMMANDS:
            return serving_cli.run_command(argv)
        if argv and argv[0] == stage.COMMAND:
            return stage.main(argv[1:])
        args, extra = submit_parser().parse_known_args(argv)
        cfg = resolve_launch_config(args, extra)
        fill_defaults(args, cfg)
        problems, warnings = check(args, cfg)
        if problems:
            raise BadInput(*problems)
        for warning in warnings:
            _note(f"warning: {warning}")
        return dry_run(args, cfg) if args.dry_run else submit(args, cfg)


def resolve_launch_config(args: argparse.Namespace, extra: list[str]) -> config_mod.Config:
    """The config of `--config` with the overrides after the options; a mistyped option is not an override."""
    unknown = [
        t for t in extra if t.startswith("--") and "." not in t.split("=")[0] and t[2:].split("=")[0] != "method"
    ]
    if unknown:
        raise BadInput(f"unknown option {unknown[0]} (config overrides look like key.sub=value); see --help")
    try:
        return config_mod.resolve(args.config, extra)
    except config_mod.ConfigError as e:
        raise BadInput(*e.problems) from None


@contextlib.contextmanager
def _aws_errors() -> Iterator[None]:
    """What boto3 raises, and Ctrl-C while following, as the launcher's errors."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted("stopped following; the job goes on (`status JOB` shows it, `stop JOB` stops it)") from None
    except NoCredentialsError:
        raise LaunchError(
            "no AWS credentials: run `aws configure` or `aws sso login`, or set AWS_PROFILE (or use --dry-run)"
        ) from None
    except ClientError as e:
        error = e.response.get("Error", {})
        raise LaunchError(f"AWS refused {e.operation_name}: {error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as e:
        raise LaunchError(f"AWS: {e}") from None
