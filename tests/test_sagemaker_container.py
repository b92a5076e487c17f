"""SageMaker training jobs as SageMaker runs them: what `launch sagemaker` really sends and uploads, replayed in a
container of our image.

`python -m launch sagemaker ... --no-wait` runs for real against moto's server on 127.0.0.1 (ModelTrainer uploads
the code and the SDK's driver channel to moto S3, the CreateTrainingJob request is captured as botocore sends it).
The test then lays the job out as SageMaker does on the instance: `/opt/ml/input/config/{hyperparameters,
inputdataconfig,resourceconfig}.json`, every channel downloaded to `/opt/ml/input/data/<channel>`, empty `model`,
`output` and `checkpoints`, and runs the request's own ContainerEntrypoint and ContainerArguments (or, for our own
image, its ENTRYPOINT with `train`) as PID 1, without `--init`, with `--network host` so the job publishes to the
same moto server. The only stand-in is the image: ours plays the Hugging Face DLC, with the requirements already
installed (the SDK's driver still runs its `pip install` of the code channel's pins).

Each test also stops the job with `podman stop -t 120` during training (SIGTERM to PID 1, as StopTrainingJob and a
spot interruption do), expects a complete checkpoint and exit code 143 well inside the grace period, then runs the
same container command again and expects the job to resume from that checkpoint and finish.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from job import config as config_mod
from launch.sagemaker import cli as sm_cli
from launch.sagemaker import request as req
from tests import test_launch_sagemaker as launch_tests
from tests.container_fixtures import assert_complete_run, exit_code, run, wait_for_log
from tests.test_launch_sagemaker import BUCKET, REGION, ROLE_ARN, _download_prefix

moto_server = launch_tests.moto_server  # moto's server on 127.0.0.1, shared by the launcher and the container

pytestmark = [pytest.mark.container, pytest.mark.slow]

OWN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/dialogsum-qlora:0.1.0"
SYSTEM_PROMPT = """You're a "careful" summarizer: one line, no 'quotes'."""
AWKWARD = [
    "model.revision='1234'",  # a string that looks like a number
    f"data.system_prompt={SYSTEM_PROMPT}",  # both quotes, and a colon YAML would read as a mapping
]
# Many steps and no scheduled save before step 20: the stop lands mid-training, so only the job's SIGTERM handling
# can have written the checkpoint; the rerun then trains the rest (about a step a second on 2 cores).
STOPPABLE = ["train.max_steps=40", "train.eval_steps=20", "train.save_steps=20"]
GRACE_S = 120


def launch(moto: dict[str, Any], *extra: str) -> dict[str, Any]:
    """`launch sagemaker --config test ... --no-wait` for real; the CreateTrainingJob request botocore sent."""
    argv = ["--config", "test", "--instance", "ml.g4dn.xlarge", "--region", REGION, "--role", ROLE_ARN,
            "--output", f"s3://{BUCKET}/sm", "--no-wait", *extra, *STOPPABLE, *AWKWARD]  # fmt: skip
    assert sm_cli.main(argv) == 0
    (sent,) = moto["requests"]
    return json.loads(json.dumps(sent, default=str))


def lay_out_opt_ml(moto: dict[str, Any], sent: dict[str, Any], root: Path, extra_hps: dict[str, str]) -> Path:
    """/opt/ml as SageMaker prepares it for this request on one ml.g4dn.xlarge (the files its agent writes)."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({**sent.get("HyperParameters", {}), **extra_hps}))
    channels = {c["ChannelName"]: c for c in sent.get("InputDataConfig", [])}
    modes = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(json.dumps({name: modes for name in channels}))
    group = {"instance_group_name": "homogeneousCluster", "instance_type": "ml.g4dn.xlarge", "hosts": ["algo-1"]}
    resources = {
        "current_host": "algo-1",
        "current_instance_type": "ml.g4dn.xlarge",
        "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1"],
        "instance_groups": [group],
        "network_interface_name": "eth0",
    }
    (config / "resourceconfig.json").write_text(json.dumps(resources))
    for name, channel in channels.items():
        where = root / "input" / "data" / name
        where.mkdir(parents=True)
        _download_prefix(moto["session"], channel["DataSource"]["S3DataSource"]["S3Uri"], where)
    for folder in ("model", "output/data", "checkpoints"):
        (root / folder).mkdir(parents=True)
    return root


def container_command(engine: str, image: str, name: str, opt_ml: Path, moto: dict, sent: dict) -> list[str]:
    """`docker run` as SageMaker's agent does it for this request: its entrypoint and arguments, if any, else the
    image's ENTRYPOINT with `train`; the job's Environment and name; no --init."""
    job = sent["TrainingJobName"]
    env = {
        "TRAINING_JOB_NAME": job,
        "TRAINING_JOB_ARN": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{job}",
        **sent.get("Environment", {}),
        **{k: v for k, v in moto["env"].items() if k.startswith("AWS_") and k != "AWS_CONFIG_FILE"},
    }
    cmd = [engine, "run", "-d", "--name", name, "--network", "host", "-v", f"{opt_ml}:/opt/ml"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    algorithm = sent["AlgorithmSpecification"]
    if "ContainerEntrypoint" in algorithm:
        cmd += ["--entrypoint", json.dumps(algorithm["ContainerEntrypoint"])]
    return cmd + [image, *algorithm.get("ContainerArguments", ["train"])]


def stop_during_training_then_resume(engine: str, cmd: list[str], name: str, opt_ml: Path, job: str) -> dict:
    """Start, stop with SIGTERM mid-training, check the checkpoint, start the same command again: the finished run's
    metrics."""
    assert run(cmd).returncode == 0
    wait_for_log(engine, name, r"^.*metrics: step=", timeout=600)
    pid1 = run([engine, "exec", name, "cat", "/proc/1/cmdline"]).stdout.split("\0")
    started = time.monotonic()
    run([engine, "stop", "-t", str(GRACE_S), name], timeout=GRACE_S + 60)
    stopped_in = time.monotonic() - started
    logs = run([engine, "logs", name])
    assert exit_code(engine, name) == 143, (logs.stdout + logs.stderr)[-4000:]
    assert stopped_in < GRACE_S / 2, f"took {stopped_in:.0f} s: the job did not act on SIGTERM"
    assert "SIGTERM received: saving a checkpoint" in logs.stdout + logs.stderr
    checkpoints = sorted((opt_ml / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, f"no checkpoint in {opt_ml / 'checkpoints'}"
    (checkpoint,) = checkpoints
    assert int(checkpoint.name.rsplit("-", 1)[1]) < 20, "the checkpoint is a scheduled one, not the SIGTERM's"
    assert (checkpoint / "checkpoint-complete.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    assert not (opt_ml / "model" / job / "manifest.json").exists()

    # SageMaker restarts a stopped spot job on a fresh instance: only the checkpoints are copied back in.
    run([engine, "rm", "-f", name])
    for folder in ("model", "output"):
        shutil.rmtree(opt_ml / folder)
        (opt_ml / folder).mkdir()
    assert run(cmd).returncode == 0
    done = run([engine, "wait", name], timeout=900)
    logs = run([engine, "logs", name])
    assert done.stdout.strip() == "0", (logs.stdout + logs.stderr)[-4000:]
    metrics = assert_complete_run(opt_ml / "model" / job)
    assert metrics["run"]["resumed_from"] == f"/opt/ml/checkpoints/{checkpoint.name}"
    metrics["_pid1"] = pid1
    return metrics


def assert_values_arrived(run_dir: Path) -> None:
    ran = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert ran["model"]["revision"] == "1234"  # a str: YAML would have read 1234 as a number
    assert ran["data"]["system_prompt"] == SYSTEM_PROMPT


def test_dlc_job_runs_the_sdks_driver_under_our_pid1_stops_and_resumes(
    engine, built, container_name, moto_server, tmp_path
):
    sent = launch(moto_server)
    job = sent["TrainingJobName"]
    algorithm = sent["AlgorithmSpecification"]
    assert sent["HyperParameters"] == {}  # the config travels in the code channel
    assert algorithm["ContainerEntrypoint"] == ["python3", "/opt/ml/input/data/code/sm_pid1.py", "/bin/bash"]
    assert algorithm["ContainerArguments"] == req.SDK_ARGUMENTS

    opt_ml = lay_out_opt_ml(moto_server, sent, tmp_path / "opt_ml", {})
    code, drivers = opt_ml / "input" / "data" / "code", opt_ml / "input" / "data" / "sm_drivers"
    assert (drivers / "sm_train.sh").is_file() and (drivers / "scripts" / "environment.py").is_file()
    assert "python3 -m job train --config config.yaml" in (drivers / "sm_train.sh").read_text()
    assert (code / "requirements.txt").read_text().splitlines() == req.job_requirements()
    shipped = config_mod.build(yaml.safe_load((code / "config.yaml").read_text()))
    assert shipped.model.revision == "1234" and shipped.data.system_prompt == SYSTEM_PROMPT

    cmd = container_command(engine, built, container_name, opt_ml, moto_server, sent)
    metrics = stop_during_training_then_resume(engine, cmd, container_name, opt_ml, job)
    assert metrics["_pid1"] == [*algorithm["ContainerEntrypoint"], *algorithm["ContainerArguments"], ""]
    assert_values_arrived(opt_ml / "model" / job)
    logs = run([engine, "logs", container_name])
    assert "Installing requirements" in logs.stdout + logs.stderr  # the SDK's own driver ran, pins and all

    # Published to moto S3; `fetch` finds the run folder through the config.yaml in the job's code channel.
    fetched = tmp_path / "fetched"
    assert sm_cli.main(["fetch", job, "--to", str(fetched), "--region", REGION]) == 0
    assert_values_arrived(fetched / job)
    assert json.loads((fetched / job / "metrics.json").read_text())["run"]["resumed_from"]


def test_own_image_runs_train_from_hyperparameters_json_stops_and_resumes(
    engine, built, container_name, moto_server, tmp_path
):
    sent = launch(moto_server, "--image", OWN_IMAGE)
    job = sent["TrainingJobName"]
    hps = sent["HyperParameters"]
    assert hps["model.revision"] == '"1234"' and "ContainerEntrypoint" not in sent["AlgorithmSpecification"]
    # What SageMaker adds itself (an SDK setting): the job ignores it. A tuning trial's `_tuning_objective_metric`
    # makes the run a trial (its own checkpoint folder, a validation objective): tests/test_tune.py.
    added = {"sagemaker_program": "train"}
    opt_ml = lay_out_opt_ml(moto_server, sent, tmp_path / "opt_ml", added)

    cmd = container_command(engine, built, container_name, opt_ml, moto_server, sent)
    assert cmd[-2:] == [built, "train"]
    metrics = stop_during_training_then_resume(engine, cmd, container_name, opt_ml, job)
    assert metrics["_pid1"] == ["/opt/venv/bin/python", "/opt/dialogsum/entrypoint.py", "train", ""]
    assert_values_arrived(opt_ml / "model" / job)
    ran = config_mod.resolve(str(opt_ml / "model" / job / "config.yaml"))
    assert ran.output.uri == f"s3://{BUCKET}/sm/runs" and ran.train.max_steps == 40
    assert sm_cli.main(["fetch", job, "--to", str(tmp_path / "fetched"), "--region", REGION]) == 0
