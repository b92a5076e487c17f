"""`python -m launch sagemaker tune`: the CreateHyperParameterTuningJob request captured under moto as botocore sends
it and checked against botocore's service model; one trial run locally as SageMaker starts it (the static
hyperparameters of that request plus tuned values and `_tuning_objective_metric`, in
/opt/ml/input/config/hyperparameters.json), whose validation `metrics:` line the objective's regex reads; a trial
that finds another trial's checkpoints refuses them in one line; `tune status|fetch` through Stubber (moto has no
ListTrainingJobsForHyperParameterTuningJob) with the run folders in moto's S3.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
import pytest
import yaml
from botocore.stub import Stubber

from job import config, rundir, training
from launch import service_model
from launch.sagemaker import cli as sm_cli
from launch.sagemaker import tune
from tests.conftest import job_env
from tests.test_launch_sagemaker import BUCKET, REGION, ROLE_ARN, _put_run, aws  # noqa: F401 - the moto fixture

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dialogsum-qlora:0.1.0"
SHORT = ["train.max_steps=4", "train.eval_steps=2", "eval.max_new_tokens=8", "eval.bootstrap_samples=20"]
"""A short trial: four steps, two checkpoints, eight-token summaries."""
TUNE = ["tune", "--config", "test", "--instance", "ml.g5.xlarge", "--region", REGION, "--role", ROLE_ARN,
        "--output", f"s3://{BUCKET}/exp", "--image", IMAGE, "--param", "lora.r=4,8",
        "--param", "train.learning_rate=1e-3:4e-3:log", "--objective", "validation:rougeL", "--max-jobs", "4",
        "--max-parallel", "2", "--objective-dialogues", "3", "--spot", *SHORT]  # fmt: skip
TUNED = {"lora.r": "4", "train.learning_rate": "0.0021"}
"""Values SageMaker could pick for a trial, as strings, the way it sends them."""


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sm_cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def shown() -> dict[str, Any]:
    """The request the dry run shows (no AWS)."""
    code, out, err = _in_process([*TUNE, "--dry-run"])
    assert code == 0, err
    assert "worst-case cost: 4 trials x ~" in err and "nothing was sent to AWS" in err
    return json.loads(out)


@dataclass
class Trial:
    opt_ml: Path
    name: str
    proc: subprocess.CompletedProcess

    @property
    def run_dir(self) -> Path:
        return self.opt_ml / "model" / self.name

    @property
    def checkpoints(self) -> Path:
        return self.opt_ml / "checkpoints" / self.name


def start_trial(opt_ml: Path, name: str, hyperparameters: dict[str, str]) -> Trial:
    """`python -m job train` as the image's entrypoint runs it when SageMaker starts a trial: with SageMaker's
    hyperparameters.json and TRAINING_JOB_NAME, /opt/ml moved into the test's folder. In-process (no signal or PID 1
    behaviour is looked at here)."""
    from job import runtime
    from tests.conftest import run_job_here

    config_dir = opt_ml / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "OPT_ML", opt_ml)
        proc = run_job_here(*["train"], env=job_env(TRAINING_JOB_NAME=name))
    return Trial(opt_ml, name, proc)


def trial_hyperparameters(request: dict[str, Any], parent: Path, **tuned: str) -> dict[str, str]:
    """What SageMaker writes for a trial: the static hyperparameters, the tuned values and the objective's name;
    output.uri points at a local folder (no S3 here)."""
    objective = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    static = dict(request["TrainingJobDefinition"]["StaticHyperParameters"], **{"output.uri": str(parent)})
    return {**static, **tuned, "_tuning_objective_metric": objective}


@pytest.fixture(scope="module")
def trial(shown, tmp_path_factory) -> Trial:
    opt_ml = tmp_path_factory.mktemp("opt_ml")
    run = start_trial(opt_ml, "tune-test-001-1a2b3c4d", trial_hyperparameters(shown, opt_ml / "runs", **TUNED))
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    return run


# ------------------------------------------------------------------------------------------------------------
# The weights' hash


def test_the_weights_hash_follows_what_shapes_the_weights() -> None:
    cfg = config.resolve("test")
    same = config.resolve("test", ["output.uri=s3://b/p", "eval.split=validation", "eval.base=false",
                                   "train.logging_steps=5", "train.checkpoint_dir=/x", "train.save_steps=3"])  # fmt: skip
    assert cfg.weights_hash() == same.weights_hash() and len(cfg.weights_hash()) == 16
    for change in ("lora.r=4", "train.learning_rate=1e-3", "train.seed=1", "data.max_train_examples=50", "method=lora"):
        assert config.resolve("test", [change]).weights_hash() != cfg.weights_hash(), change
    assert not [k for k in cfg.weights_config() if k.startswith(("output.", "eval."))]


# ------------------------------------------------------------------------------------------------------------
# One trial as SageMaker runs it


def test_a_trial_reads_its_values_from_hyperparameters_json_and_prints_the_objective(trial, shown) -> None:
    cfg = config.build(yaml.safe_load((trial.run_dir / "config.yaml").read_text()))
    assert cfg.lora.r == 4 and cfg.train.learning_rate == 0.0021  # the tuned values reached the config
    assert cfg.eval.split == "validation" and cfg.eval.base is False and cfg.eval.baselines == []
    assert cfg.eval.num_dialogues == 3 and cfg.train.max_steps == 4  # and the static ones
    metrics = json.loads((trial.run_dir / "metrics.json").read_text())
    assert metrics["base"] is None and metrics["baselines"] == {}  # trials skip the base model and the baselines
    assert metrics["scorer"]["n_dialogues"] == 3

    # The objective's metric definition reads the trial's own validation line, with the fine-tuned score.
    name = shown["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    (regex,) = [m["Regex"] for m in shown["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
                if m["Name"] == name]  # fmt: skip
    (line,) = [line for line in trial.proc.stdout.splitlines() if line.startswith("metrics: validation_")]
    found = [float(m.group(1)) for m in map(re.compile(regex).search, trial.proc.stdout.splitlines()) if m]
    assert found == [round(metrics["finetuned"]["rougeL"], 6)], line
    assert "base_rouge" not in trial.proc.stdout and "test_rouge" not in trial.proc.stdout

    # Its checkpoints are its own (every trial syncs one S3 prefix) and carry the hash of its weights' config.
    marker = json.loads((training.complete_checkpoints(trial.checkpoints)[0] / training.COMPLETE_MARKER).read_text())
    assert marker["config_hash"] == cfg.weights_hash() and marker["config"]["lora.r"] == 4
    assert rundir.verify(trial.run_dir) == []


def test_a_trial_refuses_another_trials_checkpoints_in_one_line(trial, shown) -> None:
    """Two trials of one tuning job share the CheckpointConfig's S3 prefix: a trial that finds another's checkpoints
    in its folder (or a spot restart after a config change) never resumes them, and stops before anything loads."""
    other = "tune-test-002-5e6f7a8b"
    shutil.copytree(trial.checkpoints, trial.opt_ml / "checkpoints" / other)
    hps = trial_hyperparameters(shown, trial.opt_ml / "runs", **{**TUNED, "lora.r": "8"})
    refused = start_trial(trial.opt_ml, other, hps)
    assert refused.proc.returncode == 2
    errors = [line for line in refused.proc.stderr.splitlines() if line.startswith("error")]
    newest = training.complete_checkpoints(trial.opt_ml / "checkpoints" / other)[0]
    assert errors == [
        f"error (config): {newest} was trained with another config (config hash "
        f"{json.loads((newest / training.COMPLETE_MARKER).read_text())['config_hash']}, this run's "
        f"{config.resolve(None, [], hps).weights_hash()}: lora.r 4 -> 8), so this run does not resume it; restore "
        f"those settings to resume, or use another output.run_name or train.checkpoint_dir (or move "
        f"{newest.parent} away) to train from the start"
    ]
    assert "validation rows" not in refused.proc.stderr  # refused before the data loaded
    assert "Traceback" not in refused.proc.stderr
    assert not (trial.opt_ml / "model" / other / "config.yaml").exists()  # nothing was written for it


def test_an_objective_on_another_split_than_the_run_scores_is_refused() -> None:
    from job.errors import ConfigInputError
    from job.train import check_tuning_objective

    cfg = config.resolve("test", ["eval.split=validation"])
    check_tuning_objective(cfg, "validation:rougeL")
    for objective in ("test:rougeL", "train:rougeL", "validation:bleu"):
        with pytest.raises(ConfigInputError, match=rf"^the tuning objective {objective} is not a score this run"):
            check_tuning_objective(cfg, objective)
    with pytest.raises(ConfigInputError, match="must not be the test split"):
        check_tuning_objective(config.resolve("test"), "test:rougeL")


# ------------------------------------------------------------------------------------------------------------
# The request under moto


@pytest.fixture
def tuning(aws, monkeypatch: pytest.MonkeyPatch):  # noqa: F811 - the moto fixture of test_launch_sagemaker
    """`aws` with every CreateHyperParameterTuningJob request captured as botocore sends it to moto."""
    sent: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        sent.append(json.loads(json.dumps(params, default=str)))

    monkeypatch.setattr(
        botocore.handlers,
        "BUILTIN_HANDLERS",
        [
            *botocore.handlers.BUILTIN_HANDLERS,
            ("provide-client-params.sagemaker.CreateHyperParameterTuningJob", capture),
        ],
    )
    aws["tuning_requests"] = sent
    aws["quota"] = 2.0  # spot ml.g5.xlarge: two at once
    return aws


def test_submit_sends_the_tuning_request_the_dry_run_showed(tuning, shown) -> None:
    code, out, err = _in_process(TUNE)
    assert code == 0, err
    (sent,) = tuning["tuning_requests"]
    name = sent["HyperParameterTuningJobName"]
    assert out.startswith(f"submitted {name}") and len(name) <= 32
    assert service_model.problems("sagemaker", "CreateHyperParameterTuningJob", sent) == []
    # the dry run showed this request, up to the time in the name
    assert service_model.with_placeholders_filled(shown, {shown["HyperParameterTuningJobName"]: name}) == sent

    job = sent["HyperParameterTuningJobConfig"]
    assert job["Strategy"] == "Bayesian" and job["TrainingJobEarlyStoppingType"] == "Off"
    assert job["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2}
    assert job["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:rougeL"}
    assert job["ParameterRanges"] == {
        "CategoricalParameterRanges": [{"Name": "lora.r", "Values": ["4", "8"]}],
        "ContinuousParameterRanges": [
            {"Name": "train.learning_rate", "MinValue": "0.001", "MaxValue": "0.004", "ScalingType": "Logarithmic"}
        ],
    }

    definition = sent["TrainingJobDefinition"]
    assert "ContainerEntrypoint" not in definition["AlgorithmSpecification"]  # the image's entrypoint runs trials
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE and definition["RoleArn"] == ROLE_ARN
    static = definition["StaticHyperParameters"]
    assert not set(static) & set(TUNED)  # a tuned key is never static too
    expected = config.resolve("test", [*SHORT, *(f"{k}={v}" for k, v in TUNED.items()), "eval.split=validation",
                                       "eval.base=false", "eval.num_dialogues=3", f"output.uri=s3://{BUCKET}/exp/runs"])  # fmt: skip
    assert config.resolve(None, [], {**static, **TUNED}).to_dict() == expected.to_dict()
    # spot, stopping and one checkpoint prefix for the whole tuning job (each trial keeps a folder of its own in it)
    assert definition["EnableManagedSpotTraining"] is True
    stop = definition["StoppingCondition"]
    assert (
        stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"] == 3600
    )  # --max-run: 3x the estimate, at least 1 h
    assert definition["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert definition["CheckpointConfig"]["S3Uri"].startswith(f"s3://{BUCKET}/exp/")
    assert definition["CheckpointConfig"]["S3Uri"].endswith(f"/{name}/checkpoints")
    assert definition["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/exp/jobs", "CompressionType": "NONE"}
    # moto holds it
    described = (
        tuning["session"].client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    )
    assert described["HyperParameterTuningJobName"] == name


def test_max_parallel_above_the_quota_is_refused_before_anything_is_sent(tuning) -> None:
    tuning["quota"] = 1.0
    code, _, err = _in_process(TUNE)
    assert code == 1 and tuning["tuning_requests"] == []
    assert err.startswith(
        "error: --max-parallel 2: your account's quota 'ml.g5.xlarge for spot training job usage' in us-east-1 is 1, "
        "the job needs 2; request an increase at"
    )


BAD = [
    (
        ["--image", "dlc"],
        "error: --image: a tuning job starts trials without a container entrypoint, which the `dlc` path needs (it runs the SDK's driver script); pass our image: --image ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG (`python -m launch image push` pushes it)",
    ),
    (
        ["--objective", "test:rougeL"],
        "error: --objective test:rougeL: test is data.test_split, which tuning never sees; tune on the validation split (e.g. validation:rougeL) and score the best config once on the test split",
    ),
    (
        ["--objective", "validation:bleu"],
        "error: --objective 'validation:bleu': write SPLIT:METRIC, e.g. validation:rougeL (rouge1, rouge2, rougeL, rougeLsum)",
    ),
    (
        ["--param", "lora.rank=4,8"],
        "error: --param lora.rank: not a config key (`python -m job train --help` lists them)",
    ),
    (
        ["--param", "eval.batch_size=4,8"],
        "error: --param eval.batch_size: does not change the trained weights, so trials would not differ; tune another key",
    ),
    (["--param", "lora.r=4:x"], "error: --param 'lora.r=4:x': a range is LO:HI[:log|linear] with LO and HI integers"),
    (
        ["--param", "train.learning_rate=-1:1:log"],
        "error: --param 'train.learning_rate=-1:1:log': a log range needs LO > 0",
    ),
    (
        ["--param", "lora.dropout=0.5,1.5"],
        "error: --param at lora.r=4, train.learning_rate=0.001, lora.dropout=1.5: lora.dropout must be in [0, 1), got 1.5",
    ),
    (["--strategy", "grid"], "error: --strategy grid searches listed values only: give each --param as KEY=A,B,C"),
    (["--max-parallel", "5"], "error: --max-parallel 5 is above --max-jobs 4"),
    (
        ["--max-jobs", "800", "--max-parallel", "200"],
        "error: --max-parallel 200: a tuning job runs at most 100 trials at once",
    ),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_tuning_options_are_one_line_each(extra: list[str], message: str) -> None:
    code, out, err = _in_process([*TUNE, *extra, "--dry-run"])
    assert (code, out) == (2, "") and message in err.splitlines(), err  # as docs/bad-inputs.md has it
    assert "Traceback" not in err


def test_a_grid_runs_every_combination_once() -> None:
    argv = [*TUNE[:13], "--param", "lora.r=4,8,16", "--param", "lora.alpha=8,16", "--strategy", "grid", "--dry-run"]
    code, out, err = _in_process(argv)
    assert code == 0, err
    limits = json.loads(out)["HyperParameterTuningJobConfig"]["ResourceLimits"]
    assert limits == {"MaxParallelTrainingJobs": 2}  # a grid takes no MaxNumberOfTrainingJobs
    assert "worst-case cost: 6 trials x ~" in err


# ------------------------------------------------------------------------------------------------------------
# tune status | fetch


def _summary(name: str, status: str, r: str, lr: str, value: float | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
        "CreationTime": "2026-12-01T00:00:00Z",
        "TrainingJobStatus": status,
        "TunedHyperParameters": {"lora.r": r, "train.learning_rate": lr},
    }
    if value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {"MetricName": "validation:rougeL", "Value": value}
    return summary


def _described(request: dict[str, Any], status: str, counters: dict[str, int]) -> dict[str, Any]:
    """DescribeHyperParameterTuningJob's answer for the tuning job of `request`."""
    name = request["HyperParameterTuningJobName"]
    return {
        **{
            k: request[k]
            for k in ("HyperParameterTuningJobName", "HyperParameterTuningJobConfig", "TrainingJobDefinition")
        },
        "HyperParameterTuningJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:hyper-parameter-tuning-job/{name}",
        "HyperParameterTuningJobStatus": status,
        "CreationTime": "2026-12-01T00:00:00Z",
        "TrainingJobStatusCounters": counters,
        "ObjectiveStatusCounters": {},
    }


def test_wait_follows_the_tuning_job_to_its_end(shown) -> None:
    sent = service_model.with_placeholders_filled(shown)
    name = sent["HyperParameterTuningJobName"]
    sm = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sm) as stub:
        for status, counters in (("InProgress", {"InProgress": 2}),) * 2 + (("Completed", {"Completed": 2}),):
            described = _described(sent, status, counters)
            stub.add_response("describe_hyper_parameter_tuning_job", described, {"HyperParameterTuningJobName": name})
            stub.add_response(
                "list_tags", {"Tags": sent["Tags"]}, {"ResourceArn": described["HyperParameterTuningJobArn"]}
            )
        trials = [_summary(f"{name[:19]}-00{i}-aaaa111{i}", "Completed", "4", "0.002", 0.3 + i / 100) for i in (1, 2)]
        stub.add_response(
            "list_training_jobs_for_hyper_parameter_tuning_job",
            {"TrainingJobSummaries": trials},
            {"HyperParameterTuningJobName": name, "MaxResults": 100},
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert tune.watch(sm, name, poll_s=0) == 0
        stub.assert_no_pending_responses()
    lines = out.getvalue().splitlines()
    assert lines[:3] == [f"{name}: InProgress (2 in progress)", f"{name}: Completed (2 completed)", lines[1]]
    assert lines[4].startswith(trials[1]["TrainingJobName"]) and lines[-2].startswith(
        f"best: {trials[1]['TrainingJobName']}"
    )


def test_status_and_fetch_show_every_trial_and_the_command_for_the_best(tuning, shown, tmp_path: Path) -> None:
    """SageMaker's side through Stubber (moto lacks ListTrainingJobsForHyperParameterTuningJob), S3 through moto."""
    sent = service_model.with_placeholders_filled(shown)  # the request as the submit test sends it
    name = sent["HyperParameterTuningJobName"]
    described = _described(sent, "Completed", {"Completed": 2, "NonRetryableError": 1})
    trials = [_summary(f"{name[:19]}-001-aaaa1111", "Completed", "8", "0.0012", 0.31),
              _summary(f"{name[:19]}-002-bbbb2222", "Completed", "4", "0.0031", 0.36),
              _summary(f"{name[:19]}-003-cccc3333", "Failed", "8", "0.0039", None)]  # fmt: skip
    sm = boto3.client("sagemaker", region_name=REGION)
    for t in trials[:2]:
        _put_run(tuning["session"], t["TrainingJobName"], {"metrics.json": b"{}", "adapter/adapter_config.json": b"{}"})
    with Stubber(sm) as stub:
        for _ in range(2):
            stub.add_response("describe_hyper_parameter_tuning_job", described, {"HyperParameterTuningJobName": name})
            arn = described["HyperParameterTuningJobArn"]
            stub.add_response("list_tags", {"Tags": sent["Tags"]}, {"ResourceArn": arn})
            stub.add_response(
                "list_training_jobs_for_hyper_parameter_tuning_job",
                {"TrainingJobSummaries": trials},
                {"HyperParameterTuningJobName": name, "MaxResults": 100},
            )
        job = tune.describe(sm, name)
        summaries = tune.trial_summaries(sm, name)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            tune.show(job, summaries)
        fetched = tune.fetch(tuning["session"].client("s3"), tune.describe(sm, name), tune.trial_summaries(sm, name),
                             tmp_path)  # fmt: skip
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{name}: Completed (2 completed, 1 failed)"
    assert re.split(r"\s{2,}", lines[1]) == ["trial", "status", "lora.r", "train.learning_rate", "validation:rougeL"]
    assert re.split(r"\s{2,}", lines[2]) == [trials[1]["TrainingJobName"], "Completed", "4", "0.0031", "36.00"]
    assert re.split(r"\s{2,}", lines[3]) == [trials[0]["TrainingJobName"], "Completed", "8", "0.0012", "31.00"]
    assert re.split(r"\s{2,}", lines[4]) == [trials[2]["TrainingJobName"], "Failed", "8", "0.0039", "-"]
    assert lines[5] == f"best: {trials[1]['TrainingJobName']}; run its config once, scored on the test split:"
    command = lines[6].strip()
    assert command == (
        f"python -m launch sagemaker --config test --instance ml.g5.xlarge --image {IMAGE} --output s3://{BUCKET}/exp "
        f"--role {ROLE_ARN} --spot lora.r=4 train.max_steps=4 train.learning_rate=0.0031 train.eval_steps=2 "
        "eval.max_new_tokens=8 eval.bootstrap_samples=20"
    )
    # that command is a valid launch, scored on the test split with the base model
    code, out, err = _in_process([*command.split()[4:], "--dry-run"])
    assert code == 0, err
    assert config.resolve(None, [], json.loads(out)["HyperParameters"]).eval.split is None
    assert [p.name for p in fetched] == [trials[1]["TrainingJobName"], trials[0]["TrainingJobName"]]  # best first
    assert (fetched[0] / "adapter" / "adapter_config.json").is_file()
