"""`python -m launch sagemaker`: the real CLI under moto, the CreateTrainingJob request captured as botocore sends
it, following a job through Stubber'd status transitions, fetching a run folder from moto S3, the quota check,
and `--dry-run` with no credentials and no torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from moto import mock_aws

from job import config, logs, tables
from launch import cli as launch_cli
from launch import service_model
from launch.errors import LaunchError
from launch.sagemaker import cli as sm_cli
from launch.sagemaker import follow
from launch.sagemaker import request as req

REPO = Path(__file__).resolve().parent.parent
LLAMA_3B = str(REPO / "job" / "presets" / "llama-3.2-3b-qlora.yaml")
TOKEN = "hf_PlantedTokenThatMustNeverLeave42"  # PLANTED: a fake token the tests look for
REGION = "us-east-1"
BUCKET = "team-ml"
ROLE_NAME = "SageMakerTraining"
ROLE_ARN = f"arn:aws:iam::123456789012:role/{ROLE_NAME}"


# ------------------------------------------------------------------------------------------------------------
# Metric definitions against the lines the job prints


def _match(name: str, line: str) -> str | None:
    regex = {m["Name"]: m["Regex"] for m in req.metric_definitions()}[name]
    found = re.search(regex, line)
    return found.group(1) if found else None


def test_metric_regexes_match_the_jobs_metrics_lines() -> None:
    train = logs.metrics_line({"step": 10, "loss": 1.2345, "learning_rate": 2e-4, "grad_norm": 0.731})
    evaluation = logs.metrics_line({"step": 100, "eval_loss": 0.9876})
    final = logs.metrics_line(
        {
            f"{w}_{m}": v
            for w in ("base", "finetuned")
            for m, v in zip(tables.METRICS, (0.41, 0.17, 0.33, 0.38), strict=True)
        }
    )
    assert _match("train:loss", train) == "1.2345"
    assert _match("train:learning_rate", train) == "0.0002"  # plain decimal, never 2e-04
    assert _match("train:grad_norm", train) == "0.731"
    assert _match("eval:loss", evaluation) == "0.9876"
    assert _match("train:loss", evaluation) is None  # `eval_loss=` is not `loss=`
    assert _match("base:rougeL", final) == "0.33" and _match("base:rougeLsum", final) == "0.38"
    assert _match("finetuned:rouge1", final) == "0.41"
    assert _match("eval:loss", train) is None
    assert len(req.metric_definitions()) <= 40  # SageMaker's limit per job


# ------------------------------------------------------------------------------------------------------------
# Config as hyperparameters, requirements


AWKWARD = [
    {},
    {"lora": {"target_modules": ["q_proj", "v_proj"]}, "data": {"system_prompt": "You summarize: briefly."}},
    {"data": {"prompt_template": "Dialogue:\n{dialogue}\n\nSummary: ", "system_prompt": "null"}},
    {"model": {"revision": "0123abc"}, "train": {"learning_rate": 1e-4, "epochs": 2.0}, "lora": {"dropout": 0.0}},
    {"eval": {"num_dialogues": None}, "output": {"uri": "s3://b/p/runs"}, "data": {"max_train_examples": 100}},
    {"data": {"dataset": "true", "summary_column": "[x]"}, "model": {"name": "a: b"}},
]


@pytest.mark.parametrize("changes", AWKWARD)
@pytest.mark.parametrize("preset", [LLAMA_3B, "smoke", "test"])
def test_hyperparameters_rebuild_the_exact_config(preset: str, changes: dict[str, Any]) -> None:
    cfg = config.build(config.deep_merge(config.read_yaml(preset), changes))
    hps = req.hyperparameters_for(cfg)
    assert all(isinstance(v, str) for v in hps.values())
    assert len(hps) <= 100  # CreateTrainingJob's limit
    # The job on SageMaker builds its config from defaults < hyperparameters (all an own image gets) ...
    assert config.resolve(None, [], hps).to_dict() == cfg.to_dict()
    # ... and from the resolved config.yaml in the DLC's code channel with the same hyperparameters on top.
    assert config.build(yaml.safe_load(cfg.to_yaml())).to_dict() == cfg.to_dict()


def test_the_dlc_installs_the_images_pins_and_keeps_its_torch() -> None:
    pins = [line for line in (REPO / "container" / "requirements.txt").read_text().splitlines() if "==" in line]
    reqs = req.job_requirements()
    assert reqs == [line.strip() for line in pins] and len(reqs) >= 10
    assert not [r for r in reqs if re.match(r"torch\b", r)]  # sm_pid1.py holds the DLC's torch
    assert any(r.startswith("peft==") for r in reqs) and any(r.startswith("bitsandbytes==") for r in reqs)


def test_the_pid1_entrypoint_wraps_the_sdks_own_driver_command() -> None:
    """The request's entrypoint is replaced only where it is the SDK's, and its arguments stay the SDK's."""
    from sagemaker.train.constants import DEFAULT_CONTAINER_ARGUMENTS, DEFAULT_CONTAINER_ENTRYPOINT

    assert (req.SDK_ENTRYPOINT, req.SDK_ARGUMENTS) == (DEFAULT_CONTAINER_ENTRYPOINT, DEFAULT_CONTAINER_ARGUMENTS)
    assert req.PID1_ENTRYPOINT[-1:] == DEFAULT_CONTAINER_ENTRYPOINT
    own = {"AlgorithmSpecification": {"TrainingImage": "x", "ContainerEntrypoint": ["/usr/bin/other"]}}
    req._pid1_entrypoint(own)
    assert own["AlgorithmSpecification"]["ContainerEntrypoint"] == ["/usr/bin/other"]


def test_the_pid1_wrapper_passes_sigterm_to_the_job_and_waits_for_it(tmp_path: Path) -> None:
    """SIGTERM to the wrapper reaches the job under the driver's bash; the bash dies of it at once, yet the wrapper
    waits until the job has finished its save, then exits 143. (As PID 1 in a container: tests/test_sagemaker_
    container.py.)"""
    import signal
    import time

    saved, ready = tmp_path / "saved", tmp_path / "ready"
    job = (
        "import pathlib, signal, sys, time\n"
        "def save(*_):\n"
        f"    time.sleep(2); pathlib.Path({str(saved)!r}).write_text('ok'); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, save)\n"
        f"pathlib.Path({str(ready)!r}).write_text('')\n"
        "time.sleep(60)\n"
    )
    driver = f'{sys.executable} -c "$JOB"; echo driver-finished'
    wrapper = subprocess.Popen(
        [sys.executable, str(req.PID1_SOURCE), "/bin/bash", "-c", driver],
        env={**os.environ, "JOB": job},
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 143
    assert saved.read_text() == "ok"  # the wrapper outlived the bash until the job was done
    assert "SIGTERM received: passing it to the job" in wrapper.stdout.read()


def test_the_pid1_wrapper_holds_the_installed_torch_for_pip(tmp_path: Path) -> None:
    """The wrapper, run as on the DLC with a driver that prints what pip would read: PIP_CONSTRAINT names a file
    holding this environment's torch at its installed version; the driver's exit code is the wrapper's."""
    from importlib import metadata

    driver = "cat $PIP_CONSTRAINT; exit 7"
    done = subprocess.run(
        [sys.executable, str(req.PID1_SOURCE), "/bin/bash", "-c", driver], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines()[-1] == f"torch=={metadata.version('torch')}"


def test_source_folder_holds_the_job_requirements_and_config(tmp_path: Path) -> None:
    cfg = config.resolve("test")
    req.stage_source(cfg, tmp_path)
    assert (tmp_path / "job" / "train.py").is_file() and (tmp_path / "job" / "presets" / "test.yaml").is_file()
    assert not list(tmp_path.rglob("__pycache__"))
    assert config.resolve(str(tmp_path / req.CONFIG_FILE)).to_dict() == cfg.to_dict()
    assert (tmp_path / req.REQUIREMENTS_FILE).read_text().splitlines() == req.job_requirements()
    assert (tmp_path / req.PID1_SCRIPT).read_bytes() == req.PID1_SOURCE.read_bytes()


# ------------------------------------------------------------------------------------------------------------
# Validation: every problem at once, before any AWS call


def test_bad_launch_reports_every_problem_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    rc = sm_cli.main(
        [
            "--config", LLAMA_3B, "--instance", "ml.m5.xlarge", "--instance-count", "2", "--spot",
            "--max-run", "10", "--max-wait", "5", "--image", "docker.io/me/job:1", "output.run_name=mine",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "ml.m5.xlarge is not a GPU instance type" in err and "ml.g5.xlarge" in err
    assert "--instance-count 2" in err
    assert "--max-wait 5 h must be at least --max-run 10 h" in err
    assert "SageMaker pulls training images from ECR" in err
    assert "output.run_name" in err
    assert "Traceback" not in err


def test_memory_check_names_the_setting_to_lower(capsys: pytest.CaptureFixture[str]) -> None:
    rc = sm_cli.main(
        ["--config", LLAMA_3B, "--instance", "ml.g4dn.xlarge", "--dry-run", "train.batch_size=32",
         "train.gradient_checkpointing=false"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "T4" in err and "lower train.batch_size to" in err and "--ignore-memory-check" in err
    rc = sm_cli.main(
        ["--config", LLAMA_3B, "--instance", "ml.g4dn.xlarge", "--dry-run", "model.compute_dtype=bfloat16"]
    )
    assert rc == 2 and "has no bf16" in capsys.readouterr().err


def test_a_mistyped_option_is_not_taken_for_an_override(capsys: pytest.CaptureFixture[str]) -> None:
    assert sm_cli.main(["--config", "test", "--instance", "ml.g5.xlarge", "--spto", "--dry-run"]) == 2
    assert "unknown option --spto" in capsys.readouterr().err


def test_config_errors_are_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert sm_cli.main(["--config", "test", "--instance", "ml.g5.xlarge", "lora.rank=8", "train.epoch=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


# ------------------------------------------------------------------------------------------------------------
# --dry-run: no credentials, no torch


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        HF_TOKEN=TOKEN,
        PYTHONPATH=str(REPO),
    )
    return env


NO_TORCH = (
    "import sys\n"
    "for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate', 'datasets'):\n"
    "    sys.modules[m] = None\n"
    "from launch.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "assert not [m for m in ('torch', 'transformers', 'peft') if sys.modules.get(m) is not None]\n"
    "sys.exit(rc)\n"
)


def test_dry_run_without_credentials_or_torch(tmp_path: Path) -> None:
    argv = ["sagemaker", "--config", LLAMA_3B, "--instance", "ml.g5.xlarge", "--spot", "--hf-token-secret", "hf/token",
            "--create-secret", "--region", "eu-west-1", "lora.r=32"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *argv, "--dry-run"],
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    request = json.loads(done.stdout)
    assert TOKEN not in done.stdout + done.stderr
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith(
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-training:"
    )
    assert "transformers5." in request["AlgorithmSpecification"]["TrainingImage"]
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert request["EnableManagedSpotTraining"] is True
    stop = request["StoppingCondition"]
    assert stop["MaxWaitTimeInSeconds"] == 2 * stop["MaxRuntimeInSeconds"]
    assert (
        3600 <= stop["MaxRuntimeInSeconds"] <= 6 * 3600
    )  # 3 x the estimate, not a day (tests/test_sagemaker_account.py)
    assert request["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert request["HyperParameters"] == {}  # the config travels as config.yaml in the code channel:
    assert "config.yaml (the job's whole config on the DLC; no hyperparameters):" in done.stderr
    assert "\n    r: 32\n" in done.stderr
    assert f"torch stays the DLC's {req.DLC_TORCH}" in done.stderr and "\n  transformers==" in done.stderr
    # The job gets the secret's ARN (AWS adds the suffix), so it reads the secret in the secret's own region.
    assert request["Environment"] == {
        "HF_TOKEN_SECRET_ID": "arn:aws:secretsmanager:eu-west-1:<ACCOUNT_ID>:secret:hf/token-<SUFFIX>"
    }
    assert "<ACCOUNT_ID>" in request["OutputDataConfig"]["S3OutputPath"]
    assert "cost: ~$" in done.stderr and "as of" in done.stderr and "nothing was sent to AWS" in done.stderr
    assert "would store the local HF_TOKEN" in done.stderr


# ------------------------------------------------------------------------------------------------------------
# Submitting under moto, with the request captured as botocore sends it


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """moto for S3, IAM, Secrets Manager and SageMaker. Service Quotas' ListServiceQuotas has no moto stand-in, so
    its HTTP answer is faked at botocore's edge (before-call); everything else goes through moto."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    captured: dict[str, Any] = {"requests": [], "quota": 1.0}

    def capture(params: dict[str, Any], **_: Any) -> None:
        captured["requests"].append(json.loads(json.dumps(params, default=str)))

    def quotas(**_: Any):
        body = {
            "Quotas": [
                {
                    "QuotaName": "ml.g5.xlarge for spot training job usage",
                    "QuotaCode": "L-AAAA",
                    "Value": captured["quota"],
                },
                {"QuotaName": "ml.g5.xlarge for training job usage", "QuotaCode": "L-BBBB", "Value": 1.0},
            ]
        }
        return AWSResponse("https://servicequotas", 200, {}, None), body

    monkeypatch.setattr(
        botocore.handlers,
        "BUILTIN_HANDLERS",
        [
            *botocore.handlers.BUILTIN_HANDLERS,
            ("provide-client-params.sagemaker.CreateTrainingJob", capture),
            ("before-call.service-quotas.ListServiceQuotas", quotas),
        ],
    )
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket=BUCKET)
        trust = {
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ]
        }
        session.client("iam").create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
        captured["session"] = session
        yield captured


def _launch(*extra: str) -> list[str]:
    return [
        "--instance",
        "ml.g5.xlarge",
        "--region",
        REGION,
        "--role",
        ROLE_ARN,
        "--output",
        f"s3://{BUCKET}/exp",
        *extra,
    ]


def _keys(session: boto3.Session, prefix: str) -> list[str]:
    found = session.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in found.get("Contents", [])]


def test_submit_sends_the_request_the_dry_run_showed(aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "dialogues.jsonl"
    rows = [
        {"id": str(i), "dialogue": f"#Person1#: hi {i}\n#Person2#: hello", "summary": f"greeting {i}"}
        for i in range(30)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    argv = _launch("--config", "test", "--spot", "--hf-token-secret", "team/hf", "--create-secret", "--tags", "team=nlp",
                   "--no-wait", f"data.dataset={data}", "lora.r=4")  # fmt: skip

    assert sm_cli.main([*argv, "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert aws["requests"] == []  # the dry run called nothing

    assert sm_cli.main(argv) == 0
    out = capsys.readouterr()
    (sent,) = aws["requests"]
    job_name = sent["TrainingJobName"]
    assert out.out.startswith(f"submitted {job_name}")
    assert re.fullmatch(r"dialogsum-[0-9a-f]{8}-\d{14}", job_name)

    # The dry run showed exactly this request, up to the name SageMaker's SDK stamps at submission and the
    # secret's ARN, which AWS makes.
    stamp = job_name.rsplit("-", 1)[1]
    arn = sent["Environment"]["HF_TOKEN_SECRET_ID"]
    filled = {"<yyyymmddHHMMSS>": stamp, "<ACCOUNT_ID>": "123456789012", "<SUFFIX>": arn.rsplit("-", 1)[1]}
    assert json.loads(json.dumps(shown).replace("<yyyymmddHHMMSS>", stamp)) != sent
    assert service_model.with_placeholders_filled(shown, filled) == sent

    # Image, instance, spot with max_wait >= max_run and a checkpoint URI of this run only.
    algo = sent["AlgorithmSpecification"]
    assert algo["TrainingImage"] == req.default_image(REGION, "ml.g5.xlarge")
    assert sent["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100}
    assert sent["EnableManagedSpotTraining"] is True
    assert sent["StoppingCondition"]["MaxWaitTimeInSeconds"] >= sent["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert sent["CheckpointConfig"]["S3Uri"].endswith(f"/{job_name}/checkpoints")
    assert sent["CheckpointConfig"]["S3Uri"].startswith(f"s3://{BUCKET}/exp/")
    assert sent["RoleArn"] == ROLE_ARN

    # The config travels as config.yaml in the code channel, with no hyperparameters (the SDK's driver turns each
    # into a shell variable); the data points at its channel; the run lands under --output.
    assert sent["HyperParameters"] == {}
    assert sent["AlgorithmSpecification"]["ContainerEntrypoint"] == req.PID1_ENTRYPOINT
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in sent["InputDataConfig"]}
    code = _keys(aws["session"], channels["code"].removeprefix(f"s3://{BUCKET}/"))
    body = aws["session"].client("s3").get_object(Bucket=BUCKET, Key=next(k for k in code if k.endswith("config.yaml")))
    cfg = config.build(yaml.safe_load(body["Body"].read()))
    assert cfg.lora.r == 4 and cfg.model.name == "builtin:tiny-llama"
    assert cfg.data.dataset == "/opt/ml/input/data/data/dialogues.jsonl"
    assert cfg.output.uri == f"s3://{BUCKET}/exp/runs"
    assert sent["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/exp/jobs", "CompressionType": "NONE"}

    # Metric definitions, tags, environment.
    assert algo["MetricDefinitions"] == req.metric_definitions()
    tags = {t["Key"]: t["Value"] for t in sent["Tags"]}
    assert tags["project"] == "dialogsum-qlora" and tags["team"] == "nlp" and tags["config"] == "test"
    assert tags["config-hash"] == cfg.hash() and tags["runs"] == f"s3://{BUCKET}/exp/runs"
    assert sent["Environment"] == {"HF_TOKEN_SECRET_ID": arn} and arn.startswith("arn:aws:secretsmanager:us-east-1:")
    sm = aws["session"].client("sagemaker")
    arn = sm.describe_training_job(TrainingJobName=job_name)["TrainingJobArn"]
    assert {"Key": "run", "Value": job_name} in sm.list_tags(ResourceArn=arn)["Tags"]  # added once the name is known

    # No token anywhere: not in the request, not on the terminal; it is in Secrets Manager only.
    assert TOKEN not in json.dumps(sent) and TOKEN not in out.out + out.err
    secret = aws["session"].client("secretsmanager").get_secret_value(SecretId="team/hf")
    assert secret["SecretString"] == TOKEN
    assert "secretsmanager:GetSecretValue" in out.err

    # Code and data uploaded: the job package with requirements, config and PID-1 wrapper, the data once by content
    # hash.
    assert set(channels) == {"data", "code", "sm_drivers"}
    for name in ("job/train.py", req.REQUIREMENTS_FILE, req.CONFIG_FILE, req.PID1_SCRIPT, req.ENTRY_SCRIPT):
        assert any(k.endswith(f"/code/{name}") for k in code), name
    data_prefix = channels["data"].removeprefix(f"s3://{BUCKET}/")
    assert _keys(aws["session"], data_prefix) == [f"{data_prefix}dialogues.jsonl"]
    assert "data: uploaded" in out.err

    # A second launch reuses the uploaded data.
    assert sm_cli.main(argv) == 0
    assert "data: reusing" in capsys.readouterr().err
    assert aws["requests"][1]["InputDataConfig"][0] == sent["InputDataConfig"][0]


def test_own_image_runs_train_with_hyperparameters_only(aws, capsys: pytest.CaptureFixture[str]) -> None:
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dialogsum-qlora:0.1.0"
    assert sm_cli.main(_launch("--config", LLAMA_3B, "--image", image, "--no-wait", "--hf-token-secret", "x")) == 1
    assert "no such secret" in capsys.readouterr().err  # checked before anything is created
    assert aws["requests"] == []

    assert sm_cli.main(_launch("--config", LLAMA_3B, "--image", image, "--no-wait")) == 0
    (sent,) = aws["requests"]
    assert sent["AlgorithmSpecification"]["TrainingImage"] == image
    assert "ContainerEntrypoint" not in sent["AlgorithmSpecification"]  # the image's ENTRYPOINT runs `train`
    assert "InputDataConfig" not in sent and "CheckpointConfig" not in sent
    expected = config.resolve(
        LLAMA_3B, [f"output.uri=s3://{BUCKET}/exp/runs", "output.tensorboard_dir=/opt/ml/output/tensorboard"]
    )
    assert config.resolve(None, [], sent["HyperParameters"]).to_dict() == expected.to_dict()
    assert sent["EnableManagedSpotTraining"] is False


def test_multi_gpu_instances_train_under_torchrun(aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", "test", "--instance", "ml.g5.12xlarge", "--instance-count", "2", "--region", REGION,
            "--role", ROLE_ARN, "--output", f"s3://{BUCKET}/exp", "--no-wait"]  # fmt: skip
    assert sm_cli.main([*argv, "--dry-run"]) == 0
    shown = capsys.readouterr()
    assert "torchrun: 4 process(es) per instance x 2 instance(s)" in shown.err
    assert "8 x A10G" in shown.err
    assert sm_cli.main(argv) == 0
    (sent,) = aws["requests"]
    stamp = sent["TrainingJobName"].rsplit("-", 1)[1]
    assert json.loads(shown.out.replace("<yyyymmddHHMMSS>", stamp)) == sent
    assert sent["ResourceConfig"]["InstanceCount"] == 2

    # The distributed settings travel in the SDK's driver channel: torchrun with one process per GPU.
    s3 = aws["session"].client("s3")
    drivers = next(c for c in sent["InputDataConfig"] if c["ChannelName"] == "sm_drivers")
    prefix = drivers["DataSource"]["S3DataSource"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
    distributed = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/distributed.json")["Body"].read())
    source = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/sourcecode.json")["Body"].read())
    assert distributed["process_count_per_node"] == 4 and distributed["smp"] is None
    assert source["entry_script"] == req.ENTRY_SCRIPT and source["command"] is None
    train_sh = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/sm_train.sh")["Body"].read().decode()
    assert "torchrun_driver.py" in train_sh

    # Our own image runs one process: several instances need the DLC's torchrun driver.
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dialogsum-qlora:0.1.0"
    assert sm_cli.main([*argv, "--image", image]) == 2
    assert "several instances train under torchrun" in capsys.readouterr().err


def test_torchrun_entry_script_runs_the_job_with_sm_hps_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script the torchrun driver starts (with the hyperparameters as arguments) runs `job train --config
    config.yaml`; the job reads SM_HPS itself, so a hyperparameter reaches it and the arguments do not. Run
    in-process with SageMaker's /opt/ml moved to a temp folder, so the failure file lands there."""
    import runpy

    from job import runtime

    code = req.stage_source(config.resolve("test"), tmp_path / "code")
    # The job adds its stderr handler (this test's captured stream) to the root logger: keep it to this test.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    monkeypatch.setattr(runtime, "OPT_ML", tmp_path / "opt_ml")
    monkeypatch.chdir(code)
    monkeypatch.setenv("SM_HPS", json.dumps({"lora.rank": "8"}))
    monkeypatch.setenv("TRAINING_JOB_NAME", "dialogsum-x-20261123120000")
    monkeypatch.setattr(sys, "argv", [req.ENTRY_SCRIPT, "--argv.only", "1"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(code / req.ENTRY_SCRIPT), run_name="__main__")
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'lora.rank'" in err and "argv.only" not in err
    assert "unknown key 'lora.rank'" in (tmp_path / "opt_ml" / "output" / "failure").read_text()


def test_quota_below_need_stops_before_submitting(aws, capsys: pytest.CaptureFixture[str]) -> None:
    aws["quota"] = 0.0
    assert sm_cli.main(_launch("--config", "test", "--spot", "--no-wait")) == 1
    err = capsys.readouterr().err
    assert "ml.g5.xlarge for spot training job usage" in err and "is 0" in err
    assert "https://us-east-1.console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas/L-AAAA" in err
    assert aws["requests"] == []


def test_token_in_the_config_is_refused(aws, capsys: pytest.CaptureFixture[str]) -> None:
    assert sm_cli.main(_launch("--config", "test", "--no-wait", f"data.system_prompt=key {TOKEN}")) == 1
    err = capsys.readouterr().err
    assert "would contain your HF_TOKEN" in err and TOKEN not in err
    assert aws["requests"] == []


def test_default_bucket_when_no_output_is_given(aws, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        sm_cli.main(
            ["--config", "test", "--instance", "ml.g6.xlarge", "--region", REGION, "--role", ROLE_ARN, "--no-wait"]
        )
        == 0
    )
    (sent,) = aws["requests"]
    default = f"s3://sagemaker-{REGION}-123456789012/dialogsum-qlora"
    assert sent["OutputDataConfig"]["S3OutputPath"] == f"{default}/jobs"
    assert sent["HyperParameters"] == {}
    code = next(c for c in sent["InputDataConfig"] if c["ChannelName"] == "code")
    assert code["DataSource"]["S3DataSource"]["S3Uri"].startswith(f"{default}/")


def test_missing_output_bucket_says_how_to_create_it(aws, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", "test", "--instance", "ml.g5.xlarge", "--region", REGION, "--role", ROLE_ARN]
    assert sm_cli.main([*argv, "--output", "s3://no-such-bucket/x", "--no-wait"]) == 1
    assert "bucket no-such-bucket does not exist; create it: aws s3 mb s3://no-such-bucket" in capsys.readouterr().err
    assert aws["requests"] == []


def test_the_request_guard_stops_a_token_botocore_would_send(aws) -> None:
    sm_cli._refuse_secrets_handler({"Environment": {"A": "b"}, "HyperParameters": {"x": "y"}})
    with pytest.raises(LaunchError, match="HF_TOKEN"):
        sm_cli._refuse_secrets_handler({"Environment": {"HF_TOKEN": TOKEN}})


def test_s3_data_sets_are_used_in_place() -> None:
    cfg = config.resolve("test", ["data.dataset=s3://data-bucket/dialogsum/train.jsonl"])
    moved, (channel,) = req.channels_for(cfg, f"s3://{BUCKET}/exp")
    assert channel.s3_uri == "s3://data-bucket/dialogsum/train.jsonl"
    assert moved.data.dataset == "/opt/ml/input/data/data/train.jsonl"
    moved, (channel,) = req.channels_for(config.resolve("test", ["data.dataset=s3://data-bucket/dialogsum/"]), "s3://b")
    assert channel.s3_uri == "s3://data-bucket/dialogsum/" and moved.data.dataset == "/opt/ml/input/data/data"
    unchanged, none = req.channels_for(config.resolve("test", ["data.dataset=knkarthick/dialogsum"]), "s3://b")
    assert none == [] and unchanged.data.dataset == "knkarthick/dialogsum"


def test_missing_role_says_what_to_pass(aws, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--config",
        "test",
        "--instance",
        "ml.g5.xlarge",
        "--region",
        REGION,
        "--output",
        f"s3://{BUCKET}/exp",
        "--no-wait",
    ]
    assert sm_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "No IAM role could be resolved" in err and "pass --role NAME_OR_ARN" in err and "Traceback" not in err
    assert aws["requests"] == []


# ------------------------------------------------------------------------------------------------------------
# Quota check with Stubber


def _quota_page(value: float, name: str = "ml.g6.xlarge for training job usage") -> dict[str, Any]:
    return {"Quotas": [{"QuotaName": name, "QuotaCode": "L-1234", "Value": value, "ServiceCode": "sagemaker"}]}


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (_quota_page(2.0), None),
        (_quota_page(0.0), "raises"),
        (_quota_page(5.0, "ml.g5.xlarge for training job usage"), "no SageMaker quota named"),
        ("AccessDeniedException", "could not read"),
    ],
)
def test_quota_check(answer: Any, outcome: str | None) -> None:
    client = boto3.client("service-quotas", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        if isinstance(answer, str):
            stub.add_client_error("list_service_quotas", service_error_code=answer, http_status_code=400)
        else:
            stub.add_response("list_service_quotas", answer, {"ServiceCode": "sagemaker"})
        if outcome == "raises":
            with pytest.raises(LaunchError, match=r"is 0, the job needs 1; request an increase at https://.*L-1234"):
                follow.check_quota(client, REGION, "ml.g6.xlarge", 1, spot=False)
        else:
            result = follow.check_quota(client, REGION, "ml.g6.xlarge", 1, spot=False)
            assert result is None if outcome is None else outcome in result
        stub.assert_no_pending_responses()


# ------------------------------------------------------------------------------------------------------------
# Following a job with Stubber: InProgress -> Completed, InProgress -> Failed


def _clients() -> tuple[Any, Any, Any]:
    kw = {"region_name": REGION, "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    return boto3.client("sagemaker", **kw), boto3.client("logs", **kw), boto3.client("s3", **kw)


def _job(status: str, secondary: str, transitions: list[tuple[str, str]], **extra: Any) -> dict[str, Any]:
    from datetime import datetime, timezone

    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    return {
        "TrainingJobName": "dialogsum-abc-20261123120000",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/dialogsum-abc-20261123120000",
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "SecondaryStatusTransitions": [{"Status": s, "StartTime": now, "StatusMessage": m} for s, m in transitions],
        "HyperParameters": {"output.uri": f"s3://{BUCKET}/exp/runs"},
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "img"},
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/exp/jobs/x/output/model"},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/exp/jobs"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": now,
        **extra,
    }


STARTING = [("Starting", "Launching requested ML instances")]
TRAINING = [
    *STARTING,
    ("Downloading", "Downloading the training image"),
    ("Training", "Training image download completed."),
]
NAME = "dialogsum-abc-20261123120000"
STREAM = f"{NAME}/algo-1-1763899200"


def _stub_logs(stub: Stubber, lines: list[str]) -> None:
    stub.add_response("describe_log_streams", {"logStreams": [{"logStreamName": STREAM}]})
    events = [{"timestamp": 1, "message": line, "ingestionTime": 1} for line in lines]
    stub.add_response("get_log_events", {"events": events, "nextForwardToken": "f/1", "nextBackwardToken": "b/0"})
    stub.add_response("get_log_events", {"events": [], "nextForwardToken": "f/1", "nextBackwardToken": "b/0"})


def test_wait_follows_to_completed_and_prints_rouge(capsys: pytest.CaptureFixture[str]) -> None:
    sm, logs_client, s3 = _clients()
    metrics = {
        "base": {
            "rouge1": 0.2512,
            "rouge2": 0.0811,
            "rougeL": 0.2013,
            "rougeLsum": 0.2204,
            "ci95": {"rouge1": [0.24, 0.26]},
        },
        "finetuned": {"rouge1": 0.4633, "rouge2": 0.2105, "rougeL": 0.3811, "rougeLsum": 0.3902},
    }
    with Stubber(sm) as sms, Stubber(logs_client) as ls, Stubber(s3) as s3s:
        sms.add_response("describe_training_job", _job("InProgress", "Starting", STARTING), {"TrainingJobName": NAME})
        ls.add_client_error("describe_log_streams", "ResourceNotFoundException")  # no log group yet
        sms.add_response("describe_training_job", _job("InProgress", "Training", TRAINING))
        _stub_logs(ls, [logs.metrics_line({"step": 10, "loss": 1.5}), "more"])
        completed = _job(
            "Completed", "Completed", [*TRAINING, ("Completed", "Training job completed")], BillableTimeInSeconds=1800
        )
        sms.add_response("describe_training_job", completed)
        ls.add_response("describe_log_streams", {"logStreams": [{"logStreamName": STREAM}]})
        ls.add_response("get_log_events", {"events": [], "nextForwardToken": "f/1", "nextBackwardToken": "b/0"})
        s3s.add_response(
            "get_object",
            {"Body": io.BytesIO(json.dumps(metrics).encode())},
            {"Bucket": BUCKET, "Key": f"exp/runs/{NAME}/metrics.json"},
        )
        assert sm_cli.watch(sm, logs_client, s3, NAME, poll_s=0) == 0
    out = capsys.readouterr().out
    order = ["[Starting] Launching", "[Downloading]", "[Training]", "metrics: step=10 loss=1.5", "[Completed]"]
    positions = [out.index(s) for s in order]
    assert positions == sorted(positions)
    assert out.count("[Starting]") == 1  # each transition once
    assert f"{NAME}: Completed, billable 0.50 h" in out
    assert re.search(r"^base \(zero-shot\)\s+25\.12 \(24\.00-26\.00\)\s+8\.11\s+20\.13\s+22\.04$", out, re.M)
    assert re.search(r"^fine-tuned\s+46\.33\s+21\.05\s+38\.11\s+39\.02$", out, re.M)
    assert re.search(r"^change \(fine-tuned - base\)\s+\+21\.21\s+\+12\.94\s+\+17\.98\s+\+16\.98$", out, re.M)
    assert out.rstrip().endswith(f"s3://{BUCKET}/exp/runs/{NAME}/")


def test_wait_on_failure_shows_reason_and_last_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    sm, logs_client, s3 = _clients()
    with Stubber(sm) as sms, Stubber(logs_client) as ls:
        sms.add_response("describe_training_job", _job("InProgress", "Training", TRAINING))
        _stub_logs(ls, ["loading model", "error (resources): CUDA out of memory; lower train.batch_size"])
        failed = _job(
            "Failed", "Failed", [*TRAINING, ("Failed", "Training job failed")],
            FailureReason="resources: CUDA out of memory; lower train.batch_size",
        )  # fmt: skip
        sms.add_response("describe_training_job", failed)
        ls.add_response("describe_log_streams", {"logStreams": [{"logStreamName": STREAM}]})
        ls.add_response("get_log_events", {"events": [], "nextForwardToken": "f/1", "nextBackwardToken": "b/0"})
        assert sm_cli.watch(sm, logs_client, s3, NAME, poll_s=0) == 1
    out = capsys.readouterr().out
    assert "[Training]" in out and f"{NAME}: Failed" in out
    assert "reason: resources: CUDA out of memory; lower train.batch_size" in out
    assert "last log lines:\n  loading model\n  error (resources)" in out


# ------------------------------------------------------------------------------------------------------------
# fetch and status from moto


def _put_run(session: boto3.Session, job: str, files: dict[str, bytes]) -> None:
    s3 = session.client("s3")
    entries = [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in files.items()]
    for path, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"exp/runs/{job}/{path}", Body=body)
    manifest = json.dumps({"files": entries, "seed": 42}).encode()
    s3.put_object(Bucket=BUCKET, Key=f"exp/runs/{job}/manifest.json", Body=manifest)


def _moto_job(session: boto3.Session, name: str) -> None:
    session.client("sagemaker").create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        RoleArn=ROLE_ARN,
        HyperParameters={"output.uri": f"s3://{BUCKET}/exp/runs"},
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/exp/jobs"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )


def test_fetch_downloads_and_verifies_the_run_folder(aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = aws["session"]
    _moto_job(session, NAME)
    metrics = {"base": {"rouge1": 0.25}, "finetuned": {"rouge1": 0.45}}
    files = {
        "metrics.json": json.dumps(metrics).encode(),
        "adapter/adapter_model.safetensors": os.urandom(2048),
        "report.md": b"# report\n",
    }
    _put_run(session, NAME, files)
    assert sm_cli.main(["fetch", NAME, "--to", str(tmp_path), "--region", REGION]) == 0
    folder = tmp_path / NAME
    assert capsys.readouterr().out.strip() == str(folder)
    for path, body in files.items():
        assert (folder / path).read_bytes() == body
    assert (folder / "manifest.json").is_file()

    assert sm_cli.main(["status", NAME, "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}: Completed" in out and "45.00" in out

    # A corrupted upload is caught against the manifest.
    session.client("s3").put_object(Bucket=BUCKET, Key=f"exp/runs/{NAME}/report.md", Body=b"changed")
    assert sm_cli.main(["fetch", NAME, "--to", str(tmp_path / "again"), "--region", REGION]) == 1
    assert "differ from manifest.json (report.md)" in capsys.readouterr().err


def test_fetch_of_an_unfinished_run_says_so(aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _moto_job(aws["session"], NAME)
    aws["session"].client("s3").put_object(Bucket=BUCKET, Key=f"exp/runs/{NAME}/metrics.json", Body=b"{}")
    assert sm_cli.main(["fetch", NAME, "--to", str(tmp_path), "--region", REGION]) == 1
    assert "no complete run (no manifest.json" in capsys.readouterr().err
    assert sm_cli.main(["logs", NAME, "--region", REGION]) == 0
    assert "no log lines yet" in capsys.readouterr().err
    assert sm_cli.main(["status", "no-such-job", "--region", REGION]) == 1
    assert "no training job named 'no-such-job'" in capsys.readouterr().err


def test_stop_with_stubber() -> None:
    sm, _, _ = _clients()
    with Stubber(sm) as stub:
        stub.add_response("describe_training_job", _job("InProgress", "Training", TRAINING))
        stub.add_response("stop_training_job", {}, {"TrainingJobName": NAME})
        assert "stopping" in follow.stop(sm, NAME)
        stub.add_response("describe_training_job", _job("Completed", "Completed", TRAINING))
        assert "already ended: Completed" in follow.stop(sm, NAME)


# ------------------------------------------------------------------------------------------------------------
# End to end: launch, run the code channel as SageMaker would, follow the results back


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """moto's server on 127.0.0.1, so the job (a subprocess) and the launcher share one S3 and SageMaker."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "SAGEMAKER_VALIDATE_ROLE": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    captured: list[dict[str, Any]] = []
    monkeypatch.setattr(
        botocore.handlers,
        "BUILTIN_HANDLERS",
        [
            *botocore.handlers.BUILTIN_HANDLERS,
            ("provide-client-params.sagemaker.CreateTrainingJob", lambda params, **_: captured.append(dict(params))),
            (
                "before-call.service-quotas.ListServiceQuotas",
                lambda **_: (AWSResponse("q", 200, {}, None), {"Quotas": []}),
            ),
        ],
    )
    session = boto3.Session(region_name=REGION)
    session.client("s3").create_bucket(Bucket=BUCKET)
    trust = {
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]
    }
    session.client("iam").create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
    yield {"env": env, "requests": captured, "session": session}
    # moto's state is the process's, not the server's: reset it so the next test's server starts empty.
    urllib.request.urlopen(urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST"))
    server.stop()


def _download_prefix(session: boto3.Session, uri: str, to: Path) -> None:
    bucket, prefix = follow.split_s3(uri.rstrip("/") + "/")
    s3 = session.client("s3")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        dest = to / obj["Key"][len(prefix) :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(dest))


@pytest.mark.slow
def test_launch_run_like_sagemaker_and_fetch(moto_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The launched code channel runs the real job (test preset) with the command the DLC's driver runs: in the
    code folder, `python3 -m job train --config config.yaml`, with TRAINING_JOB_NAME and SM_MODEL_DIR set (the
    request has no hyperparameters: the config is config.yaml). Without a container engine this stops short of
    SageMaker: no /opt/ml (checkpoints go to a temp folder, named in SM_HPS, which the job reads only where
    hyperparameters.json is absent) and not the SDK's driver itself, which tests/test_sagemaker_container.py runs.
    The run publishes to moto S3; `status` and `fetch` find it through the config.yaml in the job's code channel,
    and every metric definition matches the job's real stdout."""
    argv = ["--config", "test", "--instance", "ml.g4dn.xlarge", "--region", REGION, "--role", ROLE_ARN,
            "--output", f"s3://{BUCKET}/e2e", "--no-wait"]  # fmt: skip
    assert sm_cli.main(argv) == 0
    (sent,) = moto_server["requests"]
    job_name = sent["TrainingJobName"]
    capsys.readouterr()

    code = tmp_path / "code"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in sent["InputDataConfig"]}
    _download_prefix(moto_server["session"], channels["code"], code)
    assert sent["HyperParameters"] == {}
    # SM_HPS stands in for /opt/ml where the job would write: checkpoints, and TensorBoard's synced folder.
    hps = {"train.checkpoint_dir": str(tmp_path / "checkpoints"), "output.tensorboard_dir": str(tmp_path / "tb")}
    assert sent["TensorBoardOutputConfig"]["LocalPath"] == "/opt/ml/output/tensorboard"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SM_", "TRAINING_JOB"))},
        **moto_server["env"],
        "SM_HPS": json.dumps(hps),
        "TRAINING_JOB_NAME": job_name,
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "PYTHONPATH": "",
    }
    done = subprocess.run(
        req.COMMAND.replace("python3", sys.executable).split(),
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].endswith(job_name)

    # Every metric definition matches the job's real lines; the final ROUGE values are metrics.json's.
    lines = [line for line in done.stdout.splitlines() if line.startswith("metrics: ")]
    for metric in req.metric_definitions():
        assert any(re.search(metric["Regex"], line) for line in lines), metric["Name"]

    session = moto_server["session"]
    clients = session.client("sagemaker"), session.client("logs"), session.client("s3")
    assert sm_cli.watch(*clients, job_name, poll_s=0) == 0  # what --wait prints at the end
    watched = capsys.readouterr().out
    assert re.search(r"^fine-tuned\s+\d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)", watched, re.MULTILINE)

    assert sm_cli.main(["status", job_name, "--region", REGION]) == 0
    status = capsys.readouterr().out
    assert f"{job_name}: Completed" in status and "ROUGE-Lsum" in status
    assert status.rstrip().endswith(f"s3://{BUCKET}/e2e/runs/{job_name}/")

    assert sm_cli.main(["fetch", job_name, "--to", str(tmp_path / "fetched"), "--region", REGION]) == 0
    run = tmp_path / "fetched" / job_name
    metrics = json.loads((run / "metrics.json").read_text())
    final = next(line for line in lines if "finetuned_rouge1=" in line)
    assert float(_match("finetuned:rouge1", final)) == pytest.approx(metrics["finetuned"]["rouge1"], abs=1e-6)
    for name in ("adapter", "metrics.json", "predictions.jsonl", "report.md", "config.yaml", "manifest.json"):
        assert (run / name).exists(), name
    # The event files were written where SageMaker syncs them from while training, and the run folder has a copy.
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    assert (run / "tensorboard" / events.name).read_bytes() == events.read_bytes()
    ran = config.resolve(str(run / "config.yaml"))
    assert ran.output.uri == f"s3://{BUCKET}/e2e/runs" and ran.train.max_steps == 12


# ------------------------------------------------------------------------------------------------------------
# Exit codes: what boto3 raises and Ctrl-C, reported by launch/cli.py as one line each


def test_no_aws_credentials_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """botocore's own credential chain, with every source emptied (and the instance metadata service switched off)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert launch_cli.main(["sagemaker", "status", "dialogsum-x", "--region", REGION]) == 1
    assert capsys.readouterr().err == (
        "error: no AWS credentials: run `aws configure` or `aws sso login`, or set AWS_PROFILE (or use --dry-run)\n"
    )


def test_a_refusal_from_aws_is_one_line_and_exit_1(aws, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """AWS's answer is faked at botocore's edge (before-call), as an access-denied response."""

    def denied(**_: Any):
        body = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}, "ResponseMetadata": {}}
        return AWSResponse("https://sagemaker", 400, {}, None), body

    monkeypatch.setattr(
        botocore.handlers,
        "BUILTIN_HANDLERS",
        [*botocore.handlers.BUILTIN_HANDLERS, ("before-call.sagemaker.DescribeTrainingJob", denied)],
    )
    assert launch_cli.main(["sagemaker", "stop", "dialogsum-x", "--region", REGION]) == 1
    err = capsys.readouterr().err
    assert err == "error: AWS refused DescribeTrainingJob: AccessDeniedException: not authorized\n"


def test_ctrl_c_while_following_says_the_job_goes_on(aws, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Ctrl-C arrives while botocore waits for AWS's answer: exit 130, one plain line, no traceback."""

    def interrupted(**_: Any):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        botocore.handlers,
        "BUILTIN_HANDLERS",
        [*botocore.handlers.BUILTIN_HANDLERS, ("before-call.sagemaker.DescribeTrainingJob", interrupted)],
    )
    assert sm_cli.main(["logs", "dialogsum-x", "--follow", "--region", REGION]) == 130
    assert capsys.readouterr().err == (
        "stopped following; the job goes on (`status JOB` shows it, `stop JOB` stops it)\n"
    )


def test_an_unknown_platform_is_bad_input(capsys) -> None:
    assert launch_cli.main(["sagemkr"]) == 2
    assert capsys.readouterr().err == (
        "error: unknown platform 'sagemkr'; choose one of: sagemaker, kaggle, docker, image\n"
    )
