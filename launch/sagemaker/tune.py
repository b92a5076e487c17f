"""`python -m launch sagemaker tune`: a SageMaker hyperparameter tuning job over our image, scored on validation ROUGE.

    python -m launch sagemaker tune --config NAME --instance TYPE --image ECR_URI --param lora.r=8,16,32 \\
        --param train.learning_rate=1e-4:4e-4:log --objective validation:rougeL --max-jobs 8 --max-parallel 2
    python -m launch sagemaker tune status|fetch TUNING_JOB

Each trial is the training job `python -m launch sagemaker` would submit (the same plan and request builder:
role, channels, output, resources, stopping, checkpoints, spot), with the config as static hyperparameters and the
tuned keys left to SageMaker. A tuning job has no container entrypoint, so only our image runs trials: its own
entrypoint reads /opt/ml/input/config/hyperparameters.json. Trials score the fine-tuned model on a capped
validation subset (never the test split) and skip the base model and the baselines; the job prints that score as
`metrics: validation_rougeL=...`, which the objective's metric definition reads. Imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import shlex
import sys
import typing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from job import config as config_mod
from job import tables
from launch import catalog, service_model
from launch.errors import BadInput, LaunchError
from launch.sagemaker import checks
from launch.sagemaker import follow as follow_mod
from launch.sagemaker import request as req

STRATEGIES = {"bayesian": "Bayesian", "random": "Random", "grid": "Grid"}
SCALING = {"log": "Logarithmic", "linear": "Linear", "auto": "Auto"}
OBJECTIVE_DIALOGUES = 100
"""Validation dialogues a trial summarizes and scores by default: enough to rank configs, a fraction of the cost."""
NAME_LIMIT = 32  # HyperParameterTuningJobName
STAMP = "%y%m%d%H%M%S"
TRIAL_KEYS = ("eval.split", "eval.base", "eval.baselines", "eval.num_dialogues")
"""What every trial sets for itself (what is scored), left out of the command that runs the best config."""
COMMANDS = ("status", "fetch")
# SageMaker's documented limits for automatic model tuning (docs: "Resource Limits for Automatic Model Tuning", as
# of 2026-12): parallel trials per tuning job 10 by default (raisable to 100), trials per tuning job 750, metric
# definitions per tuning job 20.
MAX_PARALLEL_DEFAULT, MAX_PARALLEL_RAISED, MAX_TRIALS, MAX_METRICS = 10, 100, 750, 20

EPILOG = """examples:
  python -m launch sagemaker tune --config llama-3.2-3b-qlora --instance ml.g5.xlarge --spot \\
      --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/dialogsum-qlora:0.1.0 \\
      --param lora.r=8,16,32 --param train.learning_rate=1e-4:4e-4:log --objective validation:rougeL \\
      --max-jobs 8 --max-parallel 2 --dry-run
  python -m launch sagemaker tune status TUNING_JOB | fetch TUNING_JOB --to ./runs

--param KEY=A,B,C searches those values; KEY=LO:HI[:log|linear] a range (integer for integer keys).
How to tune and what it costs: docs/tuning.md."""


# ----------------------------------------------------------------------------------------------------------------
# Parameter ranges


@dataclass(frozen=True)
class Range:
    """One tuned config key: categorical `values`, or `low`..`high` on a `scaling` (integer or continuous)."""

    key: str
    kind: str  # Categorical, Integer or Continuous
    values: tuple[str, ...] = ()
    low: str = ""
    high: str = ""
    scaling: str = "Auto"

    def corners(self) -> list[Any]:
        """The values that bound what a trial can cost: each category, or both ends of the range."""
        raw = self.values if self.kind == "Categorical" else (self.low, self.high)
        return [config_mod.parse_scalar(v) for v in raw]

    def request(self) -> dict[str, Any]:
        if self.kind == "Categorical":
            return {"Name": self.key, "Values": list(self.values)}
        return {"Name": self.key, "MinValue": self.low, "MaxValue": self.high, "ScalingType": self.scaling}


def _field_type(key: str) -> Any:
    """The annotated type of a dotted config key, or None for a key the config does not have."""
    section, _, name = key.partition(".")
    tp = typing.get_type_hints(config_mod.Config).get(section)
    if tp is None or dataclasses.is_dataclass(tp) != bool(name):  # `method`, or a key of a section
        return None
    return typing.get_type_hints(tp).get(name) if name else tp


def parse_param(text: str) -> tuple[Range | None, str | None]:
    """(range, problem) from `KEY=A,B,C` or `KEY=LO:HI[:log|linear]`."""
    key, eq, spec = text.partition("=")
    if not eq or not key or not spec:
        return None, f"--param {text!r}: write KEY=A,B,C (values) or KEY=LO:HI[:log|linear] (a range)"
    tp = _field_type(key)
    if tp is None:
        return None, f"--param {key}: not a config key (`python -m job train --help` lists them)"
    if any(key == n or key.startswith(n + ".") for n in config_mod.WEIGHTS_NEUTRAL):
        return None, f"--param {key}: does not change the trained weights, so trials would not differ; tune another key"
    if "," in spec or ":" not in spec:
        values = tuple(v.strip() for v in spec.split(","))
        if len(set(values)) < 2 or not all(values):
            return None, f"--param {text!r}: give at least two different values (KEY=A,B)"
        return Range(
            key, "Categorical", values=tuple(req.encode_value(config_mod.parse_scalar(v)) for v in values)
        ), None
    parts = spec.split(":")
    scaling = SCALING.get(parts[2] if len(parts) == 3 else "auto")
    numbers = [config_mod.parse_scalar(p) for p in parts[:2]]
    integer = tp is int or tp == (int | None)
    wanted = int if integer else (int, float)
    if len(parts) > 3 or scaling is None or not all(isinstance(n, wanted) and not isinstance(n, bool) for n in numbers):
        kind = "integers" if integer else "numbers"
        return None, f"--param {text!r}: a range is LO:HI[:log|linear] with LO and HI {kind}"
    if not integer and not config_mod._type_ok(1.0, tp):
        return None, f"--param {key}: takes no number range; list its values instead (KEY=A,B)"
    low, high = numbers
    if not low < high:
        return None, f"--param {text!r}: LO must be below HI"
    if scaling == "Logarithmic" and low <= 0:
        return None, f"--param {text!r}: a log range needs LO > 0"
    kind = "Integer" if integer else "Continuous"
    return Range(key, kind, low=req.encode_value(low), high=req.encode_value(high), scaling=scaling), None


def corner_configs(cfg: config_mod.Config, ranges: list[Range]) -> tuple[list[config_mod.Config], list[str]]:
    """(configs, problems): the config at every corner of the search space (each category, both ends of each range,
    at most 256 of them), each built and validated as the job will."""
    tree = cfg.to_dict()
    corners = list(itertools.islice(itertools.product(*(r.corners() for r in ranges)), 256))
    built, problems = [], []
    for values in corners:
        changed = json.loads(json.dumps(tree))
        for r, value in zip(ranges, values, strict=True):
            config_mod.set_dotted(changed, r.key, value)
        try:
            built.append(config_mod.build(changed))
        except config_mod.ConfigError as e:
            shown = ", ".join(f"{r.key}={v}" for r, v in zip(ranges, values, strict=True))
            problems += [f"--param at {shown}: {p}" for p in e.problems if f"--param at {shown}: {p}" not in problems]
    return built, problems


# ----------------------------------------------------------------------------------------------------------------
# The trial config, the objective and the tuning job's name


@dataclass(frozen=True)
class Objective:
    split: str
    metric: str

    @property
    def name(self) -> str:
        return f"{self.split}:{self.metric}"

    def definition(self) -> dict[str, str]:
        """The metric definition SageMaker reads the objective with, from the job's `metrics: <split>_<m>=` line."""
        return {"Name": self.name, "Regex": req.metric_regex(f"{self.split}_{self.metric}")}


def parse_objective(text: str, cfg: config_mod.Config) -> tuple[Objective | None, str | None]:
    split, _, metric = text.partition(":")
    if not split or metric not in tables.METRICS or not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        return None, f"--objective {text!r}: write SPLIT:METRIC, e.g. validation:rougeL ({', '.join(tables.METRICS)})"
    if split == cfg.data.test_split:
        return None, (
            f"--objective {text}: {split} is data.test_split, which tuning never sees; tune on the validation split "
            f"(e.g. validation:{metric}) and score the best config once on the test split"
        )
    return Objective(split, metric), None


def trial_config(cfg: config_mod.Config, objective: Objective, dialogues: int) -> config_mod.Config:
    """What every trial runs: the fine-tuned model scored on `dialogues` dialogues of the objective's split, with no
    base model and no baselines."""
    capped = min(cfg.eval.num_dialogues or dialogues, dialogues)
    scored = dataclasses.replace(cfg.eval, split=objective.split, base=False, baselines=[], num_dialogues=capped)
    return dataclasses.replace(cfg, eval=scored)


def tuning_job_name(name: str | None, cfg: config_mod.Config, now: datetime | None = None) -> str:
    """`--name` or `tune-<config hash>`, then `-<yymmddHHMMSS>`: within SageMaker's 32 characters."""
    stamp = (now or datetime.now(timezone.utc)).strftime(STAMP)
    prefix = re.sub(r"[^a-zA-Z0-9-]+", "-", name or f"tune-{cfg.hash()}").strip("-")
    prefix = prefix[: NAME_LIMIT - len(stamp) - 1].strip("-") or "tune"
    return f"{prefix}-{stamp}"


# ----------------------------------------------------------------------------------------------------------------
# The request


def tuning_request(
    plan: req.Plan,
    name: str,
    ranges: list[Range],
    objective: Objective,
    strategy: str,
    max_jobs: int,
    max_parallel: int,
) -> dict[str, Any]:
    """CreateHyperParameterTuningJob: the training request of `plan` as the trials' definition (the fields both
    shapes have, taken as they are), its hyperparameters static but for the tuned keys, the objective's metric
    added to the job's metric definitions."""
    training = req.preview_request(plan, name)
    model = service_model._service("sagemaker")
    definition_shape = model.shape_for("HyperParameterTrainingJobDefinition")
    algorithm_shape = model.shape_for("HyperParameterAlgorithmSpecification")
    tuned = {r.key for r in ranges}
    algorithm = {k: v for k, v in training["AlgorithmSpecification"].items() if k in algorithm_shape.members}
    algorithm["MetricDefinitions"] = [*algorithm["MetricDefinitions"], objective.definition()]
    definition = {
        k: v
        for k, v in training.items()
        if k in definition_shape.members and k not in ("AlgorithmSpecification", "HyperParameters")
    }
    definition["AlgorithmSpecification"] = algorithm
    definition["StaticHyperParameters"] = {k: v for k, v in training["HyperParameters"].items() if k not in tuned}
    parameter_ranges: dict[str, list[dict[str, Any]]] = {}
    for r in ranges:
        parameter_ranges.setdefault(f"{r.kind}ParameterRanges", []).append(r.request())
    limits = {"MaxParallelTrainingJobs": max_parallel}
    if strategy != "Grid":  # a grid runs every combination once
        limits = {"MaxNumberOfTrainingJobs": max_jobs, **limits}
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": objective.name},
            "ResourceLimits": limits,
            "ParameterRanges": parameter_ranges,
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": definition,
        "Tags": training["Tags"],
    }


def request_problems(request: dict[str, Any]) -> list[str]:
    """What the service model refuses in the tuning request, each line naming the option to fix where one does."""
    found = service_model.problems("sagemaker", "CreateHyperParameterTuningJob", request, checks.PLACEHOLDERS)
    out = []
    for line in found:
        path = line.split(" ", 1)[1]
        field = re.split(r"[ .\[]", path.removeprefix("TrainingJobDefinition."), maxsplit=1)[0]
        fix = {
            "HyperParameterTuningJobName": "fix --name",
            "StaticHyperParameters": checks.FIELD_FIXES["HyperParameters"],
        }
        fix = fix.get(field) or checks.FIELD_FIXES.get(field)
        out.append(f"{line}; {fix}" if fix else line)
    return out


def trials(strategy: str, ranges: list[Range], max_jobs: int) -> int:
    """How many training jobs the tuning job runs at most: every combination under Grid, else --max-jobs."""
    if strategy == "Grid":
        n = 1
        for r in ranges:
            n *= len(r.values)
        return n
    return max_jobs


# ----------------------------------------------------------------------------------------------------------------
# The command line


def tune_parser() -> argparse.ArgumentParser:
    from launch.sagemaker import cli as sm_cli

    p = sm_cli.submit_parser()
    p.prog = "python -m launch sagemaker tune"
    p.description = (
        "A SageMaker hyperparameter tuning job: trials of our image scored on validation ROUGE, then the best "
        "config run once on the test split."
    )
    p.epilog = EPILOG
    p.set_defaults(wait=False, image=None)
    for action in p._actions:
        if action.dest == "wait":
            action.help = "follow the tuning job to its end and print its trials (default: --no-wait)"
    p.add_argument("--param", action="append", default=[], metavar="KEY=A,B|KEY=LO:HI[:log]", help="a tuned config key")
    p.add_argument(
        "--objective", default="validation:rougeL", help="SPLIT:METRIC to maximize (default validation:rougeL)"
    )
    p.add_argument(
        "--strategy", choices=list(STRATEGIES), default="bayesian", help="search strategy (default bayesian)"
    )
    p.add_argument(
        "--max-jobs", type=int, default=8, metavar="N", help="trials in all (default 8; grid: every combination)"
    )
    p.add_argument("--max-parallel", type=int, default=2, metavar="N", help="trials at once (default 2)")
    p.add_argument(
        "--objective-dialogues",
        type=int,
        default=OBJECTIVE_DIALOGUES,
        metavar="N",
        help=f"validation dialogues each trial scores (default {OBJECTIVE_DIALOGUES})",
    )
    return p


def command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch sagemaker tune", description="Follow a tuning job.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("status", "every trial's parameters and objective"), ("fetch", "download every trial's run")):
        s = sub.add_parser(name, help=text)
        s.add_argument("tuning_job", metavar="TUNING_JOB", help="tuning job name")
        s.add_argument("--region", help="AWS region (default: your AWS configuration's)")
        if name == "fetch":
            s.add_argument(
                "--to", type=Path, default=Path("runs"), metavar="DIR", help="parent folder (default ./runs)"
            )
    return p


@dataclass
class Search:
    """The checked command line of a tuning job: the trial config, its ranges and objective, the job's limits."""

    args: argparse.Namespace
    cfg: config_mod.Config
    ranges: list[Range]
    objective: Objective
    strategy: str
    corners: list[config_mod.Config]


def _search_problems(args: argparse.Namespace, cfg: config_mod.Config) -> tuple[Search | None, list[str]]:
    problems = []
    if args.image in (None, "dlc"):
        problems.append(
            "--image: a tuning job starts trials without a container entrypoint, which the `dlc` path needs (it runs "
            "the SDK's driver script); pass our image: --image ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG "
            "(`python -m launch image push` pushes it)"
        )
        args.image = "dlc"
    objective, problem = parse_objective(args.objective, cfg)
    problems += [problem] if problem else []
    ranges = []
    for text in args.param:
        r, problem = parse_param(text)
        problems += [problem] if problem else []
        ranges += [r] if r else []
    if not args.param:
        problems.append("--param: give at least one tuned key, e.g. --param lora.r=8,16,32")
    if len({r.key for r in ranges}) < len(ranges):
        problems.append("--param: each key once")
    strategy = STRATEGIES[args.strategy]
    if strategy == "Grid" and any(r.kind != "Categorical" for r in ranges):
        problems.append("--strategy grid searches listed values only: give each --param as KEY=A,B,C")
    if args.max_jobs < 1 or args.max_parallel < 1:
        problems.append("--max-jobs and --max-parallel must be at least 1")
    elif strategy != "Grid" and args.max_parallel > args.max_jobs:
        problems.append(f"--max-parallel {args.max_parallel} is above --max-jobs {args.max_jobs}")
    if args.max_parallel > MAX_PARALLEL_RAISED:
        problems.append(
            f"--max-parallel {args.max_parallel}: a tuning job runs at most {MAX_PARALLEL_RAISED} trials at once"
        )
    if trials(strategy, ranges, args.max_jobs) > MAX_TRIALS:
        problems.append(f"--max-jobs: a tuning job runs at most {MAX_TRIALS} trials (a grid: every combination)")
    if args.objective_dialogues < 1:
        problems.append("--objective-dialogues must be at least 1")
    if objective is None or problems:
        return None, problems
    trial = trial_config(cfg, objective, args.objective_dialogues)
    corners, problems = corner_configs(trial, ranges)
    return Search(args, trial, ranges, objective, strategy, corners), problems


def cost_lines(search: Search, plan: req.Plan) -> list[str]:
    """The worst case: every trial at the dearest corner of the search space."""
    args = search.args
    estimates = [catalog.estimate_cost(c, args.instance, args.spot) for c in search.corners]
    worst = max(estimates, key=lambda e: e["hours"])
    n = trials(search.strategy, search.ranges, args.max_jobs)
    lines = [
        f"estimate per trial: ~{worst['hours']:.2f} h on {args.instance} at the dearest corner of the search "
        f"(training {worst['work']['train_hours']:.2f} h, validation ROUGE on {search.cfg.eval.num_dialogues} "
        f"{search.objective.split} dialogues {worst['work']['generation_hours']:.2f} h, startup "
        f"{catalog.STARTUP_HOURS:.2f} h); {n} trials, {args.max_parallel} at a time",
    ]
    if worst["usd"] is not None:
        mode = "with spot" if args.spot else "on demand"
        lines.append(
            f"worst-case cost: {n} trials x ~{worst['hours']:.2f} h x ${worst['on_demand_per_hour']:.3f}/h = "
            f"~${n * worst['usd']:.2f} {mode}"
            + (f" (${n * worst['on_demand_usd']:.2f} on demand)" if args.spot else "")
            + f"; prices {worst['prices_region']} as of {worst['prices_as_of']} (job/prices.json)"
        )
    if worst["hours"] * 3600 > plan.max_run_s:
        lines.append(
            f"  warning: a trial's estimate exceeds --max-run ({plan.max_run_s / 3600:g} h): it would be stopped"
        )
    return lines


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def dry_run(search: Search, region: str, now: datetime | None = None) -> int:
    problems, shown = checks.checked_preview(search.args, search.cfg, region)
    if problems or shown is None:
        raise BadInput(*problems)
    plan = shown[0]
    request = build(search, plan, now)
    checks.refuse_secrets([request])
    print(json.dumps(request, indent=2))
    for line in cost_lines(search, plan):
        _note(line)
    _note(f"trial run folders: {plan.cfg.output.uri}/<trial job name>/")
    _note(f"dry run: nothing was sent to AWS (`tune status {request['HyperParameterTuningJobName']}` once submitted)")
    return 0


def build(search: Search, plan: req.Plan, now: datetime | None = None) -> dict[str, Any]:
    """The tuning request for the plan, checked against the service model."""
    args = search.args
    name = tuning_job_name(args.name, search.cfg, now)
    request = tuning_request(
        plan, name, search.ranges, search.objective, search.strategy, args.max_jobs, args.max_parallel
    )
    problems = request_problems(request)
    metrics = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    if len(metrics) > MAX_METRICS:
        problems.append(f"{len(metrics)} metric definitions: a tuning job takes at most {MAX_METRICS}")
    if problems:
        raise BadInput(*problems)
    return request


def submit(search: Search, region: str) -> int:
    import boto3

    from launch.sagemaker import cli as sm_cli

    args = search.args
    problems, _ = checks.checked_preview(args, search.cfg, region)
    if problems:
        raise BadInput(*problems)
    boto = boto3.Session(region_name=region)
    try:
        warning = follow_mod.check_quota(
            boto.client("service-quotas"), region, args.instance, args.max_parallel, args.spot
        )
    except LaunchError as e:
        raise LaunchError(f"--max-parallel {args.max_parallel}: {e}") from None
    if warning:
        _note(f"warning: {warning}")
    if args.max_parallel > MAX_PARALLEL_DEFAULT:
        _note(
            f"warning: --max-parallel {args.max_parallel} is above SageMaker's default of {MAX_PARALLEL_DEFAULT} "
            f"parallel trials per tuning job; the service refuses it unless that limit was raised for this account"
        )
    secret_id, secret = checks.uses_secret(args), None
    if secret_id:
        secrets = boto.client("secretsmanager")
        if args.create_secret:
            secret = follow_mod.store_secret(secrets, secret_id, checks.local_tokens()[0])
            _note(f"stored HF_TOKEN in secret {secret}; the execution role needs secretsmanager:GetSecretValue on it")
        else:
            secret = follow_mod.secret_arn(secrets, secret_id)
    if args.output:
        sm_cli.check_bucket(boto.client("s3"), args.output, region)
    session = sm_cli.sagemaker_session(boto, args.output)
    output = args.output.rstrip("/") if args.output else f"s3://{session.default_bucket()}/{checks.DEFAULT_PREFIX}"
    plan = checks.make_plan(args, search.cfg, region, output, sm_cli.resolve_role(args.role, session), secret)
    request = build(search, plan)
    checks.refuse_secrets([request])
    s3 = boto.client("s3")
    for channel in plan.channels:
        if not channel.source.startswith("s3://"):
            uploaded = follow_mod.upload_channel(s3, Path(channel.source), channel.s3_uri)
            _note(f"{channel.name}: {'uploaded' if uploaded else 'reusing'} {channel.s3_uri}")
    boto.client("sagemaker").create_hyper_parameter_tuning_job(**request)
    name = request["HyperParameterTuningJobName"]
    print(f"submitted {name}")
    _note(f"console: https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/hyper-tuning-jobs/{name}")
    _note(f"follow: python -m launch sagemaker tune status {name} --region {region}")
    return watch(boto.client("sagemaker"), name) if args.wait else 0


# ----------------------------------------------------------------------------------------------------------------
# Status and fetch


def describe(sm: Any, name: str) -> dict[str, Any]:
    """The tuning job, with its tags (the config it ran), which the description itself leaves out."""
    from botocore.exceptions import ClientError

    try:
        job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    except ClientError as e:
        if e.response["Error"]["Code"] in ("ResourceNotFound", "ValidationException"):
            raise LaunchError(f"no tuning job named {name!r} in this account and region (check --region)") from None
        raise
    try:
        job["Tags"] = sm.list_tags(ResourceArn=job["HyperParameterTuningJobArn"])["Tags"]
    except ClientError:
        job["Tags"] = []  # the command for the best config then names CONFIG for the user to fill in
    return job


def trial_summaries(sm: Any, name: str) -> list[dict[str, Any]]:
    """Every trial, best objective first (trials without one last)."""
    found, kwargs = [], {"HyperParameterTuningJobName": name, "MaxResults": 100}
    while True:
        page = sm.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
        found += page["TrainingJobSummaries"]
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]

    def objective(t: dict[str, Any]) -> float:
        value = (t.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        return -float("inf") if value is None else value

    return sorted(found, key=lambda t: (objective(t), t["TrainingJobName"]), reverse=True)


def trial_rows(job: dict[str, Any], summaries: list[dict[str, Any]]) -> list[list[str]]:
    """The header and one row per trial: its name, status, tuned values and objective (x 100, as ROUGE tables)."""
    ranges = job["HyperParameterTuningJobConfig"].get("ParameterRanges", {})
    keys = [r["Name"] for kind in ranges.values() for r in kind]
    metric = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    rows = [["trial", "status", *keys, metric]]
    for t in summaries:
        value = (t.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        tuned = t.get("TunedHyperParameters", {})
        shown = tables.percent(value) if value is not None else tables.MISSING
        rows.append(
            [t["TrainingJobName"], t["TrainingJobStatus"], *(tuned.get(k, tables.MISSING) for k in keys), shown]
        )
    return rows


def best_command(job: dict[str, Any], best: dict[str, Any]) -> str:
    """`python -m launch sagemaker ...` that runs the best trial's config once, scored on the test split: every key
    where the trial's config differs from the preset it started from, without what only trials set (TRIAL_KEYS)."""
    definition = job["TrainingJobDefinition"]
    config_name = {t["Key"]: t["Value"] for t in job.get("Tags", [])}.get("config", "CONFIG")
    trial = config_mod.flatten(
        config_mod.resolve(
            None, [], {**definition.get("StaticHyperParameters", {}), **best["TunedHyperParameters"]}
        ).to_dict()
    )
    try:
        preset = config_mod.flatten(config_mod.resolve(config_name).to_dict())
    except config_mod.ConfigError:  # a YAML file not here: every value that differs from the defaults
        preset = config_mod.flatten(config_mod.Config().to_dict())
    output = definition["OutputDataConfig"]["S3OutputPath"].rstrip("/").removesuffix("/jobs")
    channels = {
        str(req.CHANNEL_ROOT / c["ChannelName"]): c["DataSource"]["S3DataSource"]["S3Uri"].rstrip("/")
        for c in definition.get("InputDataConfig", [])
    }
    overrides = {}
    for key, value in trial.items():
        if key in TRIAL_KEYS or preset.get(key) == value or (key == "output.uri" and value == f"{output}/runs"):
            continue
        text = req.encode_value(value)
        for inside, uri in channels.items():  # a local data set or model, uploaded: used from S3 in place
            if text == inside or text.startswith(inside + "/"):
                text = uri + text[len(inside) :]
        overrides[key] = text
    resources = definition["ResourceConfig"]
    words = ["python", "-m", "launch", "sagemaker", "--config", config_name, "--instance", resources["InstanceType"],
             "--image", definition["AlgorithmSpecification"]["TrainingImage"], "--output", output,
             "--role", definition["RoleArn"]]  # fmt: skip
    if definition.get("EnableManagedSpotTraining"):
        words.append("--spot")
    words += [f"{k}={v}" for k, v in overrides.items()]
    return " ".join(shlex.quote(w) for w in words)


COUNTERS = {"Completed": "completed", "InProgress": "in progress", "RetryableError": "retrying",
            "NonRetryableError": "failed", "Stopped": "stopped"}  # fmt: skip


def status_line(job: dict[str, Any]) -> str:
    counters = job.get("TrainingJobStatusCounters", {})
    done = ", ".join(f"{v} {COUNTERS.get(k, k)}" for k, v in counters.items() if v)
    return f"{job['HyperParameterTuningJobName']}: {job['HyperParameterTuningJobStatus']}" + (
        f" ({done})" if done else ""
    )


def watch(sm: Any, name: str, poll_s: float = 60.0) -> int:
    """Print the tuning job's state as its trials end, then every trial; exit 0 once it completed."""
    import time

    last = None
    while True:
        job = describe(sm, name)
        if (line := status_line(job)) != last:
            print(line, flush=True)
            last = line
        if job["HyperParameterTuningJobStatus"] in follow_mod.TERMINAL:
            break
        time.sleep(poll_s)
    show(job, trial_summaries(sm, name))
    return 0 if job["HyperParameterTuningJobStatus"] == "Completed" else 1


def show(job: dict[str, Any], summaries: list[dict[str, Any]]) -> None:
    print(status_line(job))
    if job.get("FailureReason"):
        print(f"  reason: {job['FailureReason']}")
    print(tables.text(trial_rows(job, summaries)))
    scored = [
        t for t in summaries if (t.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value") is not None
    ]
    if scored:
        print(f"best: {scored[0]['TrainingJobName']}; run its config once, scored on the test split:")
        print(f"  {best_command(job, scored[0])}")


def fetch(s3: Any, job: dict[str, Any], summaries: list[dict[str, Any]], to: Path) -> list[Path]:
    """Every completed trial's run folder into `to/<trial>/`, each checked against its manifest."""
    definition = job["TrainingJobDefinition"]
    fetched = []
    for t in summaries:
        if t["TrainingJobStatus"] != "Completed":
            continue
        stub = {
            "TrainingJobName": t["TrainingJobName"],
            "TrainingJobStatus": t["TrainingJobStatus"],
            "HyperParameters": definition.get("StaticHyperParameters", {}),
            "OutputDataConfig": definition["OutputDataConfig"],
        }
        fetched.append(follow_mod.fetch(s3, stub, to))
    return fetched


def run_command(argv: list[str]) -> int:
    import boto3

    args = command_parser().parse_args(argv)
    boto = boto3.Session(region_name=checks.region_of(args, dry_run=False))
    sm = boto.client("sagemaker")
    job = describe(sm, args.tuning_job)
    summaries = trial_summaries(sm, args.tuning_job)
    show(job, summaries)
    if args.command == "fetch":
        for path in fetch(boto.client("s3"), job, summaries, args.to):
            print(path)
    return 0


def run(argv: list[str]) -> int:
    """`tune ...` as `python -m launch sagemaker` passes it on (AWS errors are reported there)."""
    from launch.sagemaker import cli as sm_cli

    if argv and argv[0] in COMMANDS:
        return run_command(argv)
    args, extra = tune_parser().parse_known_args(argv)
    args.tensorboard = False  # a tuning job's trial definition has no TensorBoardOutputConfig to sync the logs
    cfg = sm_cli.resolve_launch_config(args, extra)
    search, problems = _search_problems(args, cfg)
    if search is not None:
        checks.fill_defaults(args, search.cfg)
        more, warnings = checks.check(args, search.cfg)
        problems += more
        for warning in warnings:
            _note(f"warning: {warning}")
    if problems or search is None:
        raise BadInput(*problems)
    region = checks.region_of(args, dry_run=args.dry_run)
    return dry_run(search, region) if args.dry_run else submit(search, region)
