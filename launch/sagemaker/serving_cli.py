"""`python -m launch sagemaker deploy|invoke|delete|endpoints|transform`: serve a finished run on SageMaker.

    python -m launch sagemaker deploy RUN --instance ml.g5.xlarge [--image URI] [--hf-token-secret ID | --model-s3 URI]
        [--subnets ID ... --security-groups ID ...] [--network-isolation] [--kms-key KEY] [--dry-run]
    python -m launch sagemaker invoke ENDPOINT --input dialogues.jsonl [--output summaries.jsonl]
    python -m launch sagemaker endpoints
    python -m launch sagemaker delete ENDPOINT
    python -m launch sagemaker transform RUN --input s3://BUCKET/dialogues/ --instance ml.g5.xlarge [--dry-run]

RUN is the run folder in S3 (s3://.../runs/NAME/) or the training job's name. Every request is checked against
botocore's service model and for the local Hugging Face token before anything is created; `--dry-run` prints the
requests as JSON on stdout and the hourly cost on stderr, and creates nothing (it reads the run folder). Imports no
torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launch import service_model
from launch.errors import BadInput, LaunchError
from launch.sagemaker import account, checks, follow, serving, stage
from launch.sagemaker import endpoint as ep
from launch.sagemaker import transform as tf

COMMANDS = ("deploy", "invoke", "delete", "endpoints", "transform")
POLL_S = 30.0
"""Seconds between status checks while an endpoint is created or a transform job runs."""


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch sagemaker", description="Serve a finished run on SageMaker (docs/serving-sagemaker.md)."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--region", help="AWS region (default: your AWS configuration's)")

    def model_options(s: argparse.ArgumentParser) -> None:
        s.add_argument(
            "run", metavar="RUN", help="the run folder in S3 (s3://.../runs/NAME/) or the training job's name"
        )
        s.add_argument("--instance", required=True, metavar="TYPE", help="GPU instance type, e.g. ml.g5.xlarge")
        s.add_argument("--instance-count", type=int, default=1, metavar="N", help="instances (default 1)")
        s.add_argument("--image", metavar="ECR_URI", help="our image in ECR (default: dialogsum-qlora:<version> there)")
        s.add_argument("--role", help="execution role ARN or name (default: the SDK's resolution)")
        s.add_argument("--hf-token-secret", metavar="ID", help="Secrets Manager id or ARN of the Hugging Face token")
        s.add_argument(
            "--model-s3",
            metavar="S3_URI",
            help=f"the run's base model staged by `{stage.COMMAND}`: read as model data beside the run, no Hub token",
        )
        s.add_argument(
            "--name", help="the endpoint's name (transform: the job's, before its timestamp); default: the run's name"
        )
        s.add_argument("--dry-run", action="store_true", help="print the requests and the hourly cost; create nothing")
        s.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True, help="wait for the end (default)")
        s.set_defaults(create_secret=False)
        common(s)
        account.add_options(s, training=False)

    deploy = sub.add_parser("deploy", help="a real-time endpoint for a finished run")
    model_options(deploy)
    deploy.add_argument(
        "--check",
        type=int,
        default=ep.CHECK_DIALOGUES,
        metavar="N",
        help=f"score the endpoint on N of the run's test dialogues once it is up (default {ep.CHECK_DIALOGUES}; 0: no check)",
    )

    invoke = sub.add_parser("invoke", help="summarize dialogues with an endpoint")
    invoke.add_argument("endpoint", metavar="ENDPOINT")
    invoke.add_argument("--input", required=True, metavar="FILE", help="JSON lines with a `dialogue` (and `id`) each")
    invoke.add_argument("--output", type=Path, metavar="FILE", help="write the summaries here (default: stdout)")
    invoke.add_argument("--model", choices=("finetuned", "base"), help="base: the adapter switched off")
    invoke.add_argument("--max-new-tokens", type=int, metavar="N")
    invoke.add_argument("--batch", type=int, default=ep.BATCH, metavar="N", help=f"dialogues per request ({ep.BATCH})")
    common(invoke)

    delete = sub.add_parser("delete", help="delete an endpoint, its config and its model")
    delete.add_argument("endpoint", metavar="ENDPOINT")
    common(delete)

    endpoints = sub.add_parser("endpoints", help="the region's endpoints and transform jobs, and their cost an hour")
    common(endpoints)

    transform = sub.add_parser("transform", help="a Batch Transform job over JSON lines in S3")
    model_options(transform)
    transform.add_argument("--input", required=True, metavar="S3_URI", help="s3:// prefix or file of JSON lines")
    transform.add_argument(
        "--output", metavar="S3_URI", help="where results go (default: <runs' parent>/transforms/JOB/)"
    )
    transform.add_argument("--to", type=Path, default=Path("transforms"), metavar="DIR", help="fetch results here")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Shared by deploy and transform


def _options_problems(args: argparse.Namespace) -> list[str]:
    problems = serving.instance_problems(args.instance, args.instance_count)
    if args.image and not checks.ECR_IMAGE.match(args.image):
        problems.append(
            f"--image {args.image!r}: SageMaker pulls images from ECR; give ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG "
            "(`python -m launch image push` pushes ours)"
        )
    if args.name is not None:
        problems += serving.name_problems(args.name)
    if args.model_s3 is not None and (problem := stage.model_s3_problem(args.model_s3)):
        problems.append(problem)
    problems += account.option_problems(account.from_args(args), args.instance)
    if getattr(args, "check", 0) < 0:
        problems.append(f"--check {args.check}: give a number of dialogues, 0 for none")
    if args.command == "transform":
        for option in ("input", "output"):
            value = getattr(args, option)
            if value is not None and not value.startswith("s3://"):
                problems.append(f"--{option} {value!r}: Batch Transform reads and writes S3; give s3://BUCKET/PREFIX")
    return problems


def _prepare(args: argparse.Namespace) -> tuple[Any, str, serving.Run]:
    """The boto3 session, the region and the run folder, read from S3 (read only, also for --dry-run)."""
    import boto3
    from botocore.exceptions import NoCredentialsError

    problems = _options_problems(args)
    if problems:
        raise BadInput(*problems)
    region = checks.region_of(args, dry_run=args.dry_run)
    problem = checks.region_problem(region, given=bool(args.region))
    if problem:
        raise BadInput(problem)
    boto = boto3.Session(region_name=region)
    try:
        uri = serving.locate(boto.client("sagemaker"), boto.client("s3"), args.run)
        run = serving.read_run(boto.client("s3"), uri)
        if args.model_s3:
            serving.use_staged(boto.client("s3"), run, args.model_s3)
    except NoCredentialsError:
        if not args.dry_run:
            raise
        raise LaunchError(
            "no AWS credentials: --dry-run reads the run folder from S3 (s3:GetObject); run `aws configure` or "
            "`aws sso login`, or set AWS_PROFILE"
        ) from None
    problems = serving.run_problems(run)
    if problems:
        raise LaunchError(*problems)
    hub_base = run.base_model if run.needs_base and not run.staged else None
    problems = account.serving_isolation_problems(account.from_args(args), hub_base, args.hf_token_secret)
    if problems:
        raise BadInput(*problems)
    return boto, region, run


def _identity(args: argparse.Namespace, boto: Any, region: str) -> tuple[str, str, str | None, str]:
    """(image, role, secret ARN, account): placeholders for --dry-run, AWS's answers otherwise."""
    if args.dry_run:
        account = service_model.ACCOUNT_PLACEHOLDER
        image = args.image or serving.default_image(account, region)
        return image, serving.shown_role(args.role), checks.shown_secret(args, region), account
    account = boto.client("sts").get_caller_identity()["Account"]
    image = args.image or serving.default_image(account, region)
    serving.check_image(boto.client("ecr"), image, account, region)
    secret = follow.secret_arn(boto.client("secretsmanager"), args.hf_token_secret) if args.hf_token_secret else None
    return image, serving.resolve_role(args.role, boto), secret, account


def _show(requests: dict[str, Any], run: serving.Run, cost: list[str]) -> int:
    """The dry run: the requests as they would be sent, the model's size and what it would cost."""
    print(json.dumps(requests, indent=2))
    _note(serving.size_line(run))
    for line in cost:
        _note(line)
    _note("dry run: read the run folder, created nothing")
    return 0


def _notes(args: argparse.Namespace, run: serving.Run, secret: str | None) -> account.Account:
    """The warnings about the run and what the account options do beyond the requests; returns those options."""
    for warning in serving.run_warnings(run, secret):
        _note(f"warning: {warning}")
    acct = account.from_args(args)
    for line in account.notes(acct, args.instance, output=args.command == "transform"):
        _note(line)
    return acct


# ----------------------------------------------------------------------------------------------------------------
# Commands


def deploy(args: argparse.Namespace) -> int:
    boto, region, run = _prepare(args)
    name = serving.resource_name(args.name, run)
    image, role, secret, _ = _identity(args, boto, region)
    acct = _notes(args, run, secret)
    requests = serving.checked(
        ep.requests_for(name, run, image, role, secret, args.instance, args.instance_count, acct)
    )
    cost = ep.cost_lines(args.instance, args.instance_count, name, region)
    if args.dry_run:
        return _show(requests, run, cost)
    sm = boto.client("sagemaker")
    found = ep.taken(sm, name)
    if found:
        what = found[0] if len(found) == 1 else f"{', '.join(found[:-1])} and {found[-1]}"
        verb, it = ("exists", "it") if len(found) == 1 else ("exist", "them")
        raise LaunchError(
            f"{name}: the {what} of that name {verb} already; delete {it} first "
            f"(python -m launch sagemaker delete {name} --region {region}) or pass --name"
        )
    serving.guard(boto, ep.OPERATIONS)
    ep.create(sm, requests)
    print(f"creating endpoint {name} for {run.uri}")
    _note(serving.size_line(run))
    for line in cost:
        _note(line)
    if not args.wait:
        _note(f"follow: python -m launch sagemaker endpoints --region {region}")
        return 0
    endpoint = ep.wait(sm, name, out=print, poll_s=POLL_S)
    if endpoint["EndpointStatus"] != "InService":
        raise LaunchError(
            f"endpoint {name} is {endpoint['EndpointStatus']}: {endpoint.get('FailureReason', 'no reason given')} "
            f"(its logs: CloudWatch /aws/sagemaker/Endpoints/{name}); delete it: python -m launch sagemaker delete {name}"
        )
    print(f"endpoint {name}: InService")
    if args.check:
        rows = ep.check_rows(run, args.check)
        if not rows:
            _note(f"no check: {run.uri} holds no predictions.jsonl with references")
        else:
            answers = _on_failure_say_it_bills(
                name, region, lambda: ep.summarize(boto.client("sagemaker-runtime"), name, rows)
            )
            for line in ep.check_report(run, rows, answers):
                print(line)
    _note(f"invoke: python -m launch sagemaker invoke {name} --input dialogues.jsonl --region {region}")
    _note(ep.BILLS_WARNING.format(name=name, region=region))
    return 0


def _on_failure_say_it_bills(name: str, region: str, call: Any) -> Any:
    try:
        return call()
    except LaunchError as e:
        raise LaunchError(
            *e.lines,
            f"the endpoint is up and bills until deleted: python -m launch sagemaker delete {name} --region {region}",
        ) from None


def transform(args: argparse.Namespace) -> int:
    boto, region, run = _prepare(args)
    stamp = service_model.STAMP_PLACEHOLDER if args.dry_run else _stamp()
    name = serving.resource_name(args.name, run, suffix=f"-{stamp}")
    parent = run.uri.rstrip("/").rsplit("/", 1)[0].removesuffix("/runs")
    destination = (args.output or f"{parent}/transforms/{name}").rstrip("/") + "/"
    image, role, secret, _ = _identity(args, boto, region)
    acct = _notes(args, run, secret)
    requests = serving.checked(
        tf.requests_for(
            name, run, image, role, secret, args.instance, args.instance_count, args.input, destination, acct
        )
    )
    cost = tf.cost_lines(requests["CreateTransformJob"], run)
    if args.dry_run:
        return _show(requests, run, cost)
    sm = boto.client("sagemaker")
    serving.guard(boto, tf.OPERATIONS)
    sm.create_model(**requests["CreateModel"])
    sm.create_transform_job(**requests["CreateTransformJob"])
    print(f"transform job {name}: {args.input} -> {destination}")
    for line in cost:
        _note(line)
    if not args.wait:
        _note(f"the model {name} stays until deleted: aws sagemaker delete-model --model-name {name} --region {region}")
        return 0
    job = tf.wait(sm, name, out=print, poll_s=POLL_S)
    sm.delete_model(ModelName=name)  # the job has its own copy of the container; nothing else uses the model
    if job["TransformJobStatus"] != "Completed":
        raise LaunchError(
            f"transform job {name} is {job['TransformJobStatus']}: {job.get('FailureReason', 'no reason given')} "
            f"(its logs: CloudWatch /aws/sagemaker/TransformJobs/{name})"
        )
    print(tf.fetch(boto.client("s3"), job, args.to))
    return 0


def _stamp() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")


def invoke(args: argparse.Namespace) -> int:
    import boto3

    if args.batch < 1:
        raise BadInput(f"--batch {args.batch}: give at least 1 dialogue per request")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise BadInput(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    rows = ep.read_input(args.input)
    if args.output is not None and args.output.exists():
        raise BadInput(f"--output {args.output} exists; choose another file or remove it")
    region = checks.region_of(args, dry_run=False)
    runtime = boto3.Session(region_name=region).client("sagemaker-runtime")
    lines = ep.summarize(
        runtime, args.endpoint, rows, batch=args.batch, model=args.model, max_new_tokens=args.max_new_tokens
    )
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(args.output)
    return 0


def delete(args: argparse.Namespace) -> int:
    import boto3

    sm = boto3.Session(region_name=checks.region_of(args, dry_run=False)).client("sagemaker")
    for line in ep.delete(sm, args.endpoint):
        print(line)
    return 0


def endpoints(args: argparse.Namespace) -> int:
    import boto3

    sm = boto3.Session(region_name=checks.region_of(args, dry_run=False)).client("sagemaker")
    for line in ep.endpoints_table(ep.running(sm), tf.running(sm)):
        print(line)
    return 0


def run_command(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return {"deploy": deploy, "invoke": invoke, "delete": delete, "endpoints": endpoints, "transform": transform}[
        args.command
    ](args)
