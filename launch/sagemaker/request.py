"""What a SageMaker training job of ours consists of: the plan built from the config and the command line, its
hyperparameters, metric definitions, source folder and requirements, and the CreateTrainingJob request it becomes.

`preview_request` writes the request as SageMaker will receive it, without AWS (for `--dry-run`);
`model_trainer` builds the same job with SDK v3's ModelTrainer, which uploads the code and submits it. A test keeps
the two identical. Imports no torch; the SageMaker SDK is imported only when a job is really built.

How the config reaches the job: on the DLC it travels as the resolved `config.yaml` in the code channel and the
request carries no hyperparameters (the SDK's driver turns each one into a shell variable, which a dotted key or a
value holding `'` breaks). Our own image gets it as dotted-key hyperparameters, which the job reads from
`/opt/ml/input/config/hyperparameters.json` itself, with no shell in between.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import job
from job import config as config_mod
from job.config import Config
from launch import catalog, service_model
from launch.errors import LaunchError
from launch.sagemaker import account

PROJECT = "dialogsum-qlora"
REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_PACKAGE = Path(job.__file__).resolve().parent

# The Hugging Face PyTorch training DLC with transformers 5.x (the newest the SDK's table knows).
DLC = {"version": "5.3.0", "base_framework_version": "pytorch2.9.0", "py_version": "py312"}
DLC_TORCH = DLC["base_framework_version"].removeprefix("pytorch")
"""The DLC's torch, which its jobs keep (our image's base has its own: docs/sagemaker.md)."""

CHANNEL_ROOT = PurePosixPath("/opt/ml/input/data")
CHECKPOINT_DIR = "/opt/ml/checkpoints"
CONFIG_FILE = "config.yaml"
REQUIREMENTS_FILE = "requirements.txt"
PINS = REPO_ROOT / "container" / "requirements.txt"
"""The image's pins: the DLC installs exactly these at start, so both paths run the same versions."""
COMMAND = f"python3 -m job train --config {CONFIG_FILE}"
ENTRY_SCRIPT = "train_job.py"
# SageMaker's torchrun driver runs `torchrun ... <entry script> --key value ...` with the hyperparameters as
# arguments. The job reads its config from config.yaml (and hyperparameters.json, which it reads itself), never
# from argv: re-parsing argv would turn a value such as "You summarize: briefly." into a mapping.
ENTRY_SCRIPT_TEXT = f'''"""Entry script for SageMaker's torchrun driver: every rank runs `python -m job train --config {CONFIG_FILE}`."""

import sys

from job.cli import main

sys.exit(main(["train", "--config", "{CONFIG_FILE}"]))
'''
SECRET_ENV = "HF_TOKEN_SECRET_ID"

# PID 1 on the DLC. With source code the SDK always sends ContainerEntrypoint ["/bin/bash"] and these arguments;
# bash as PID 1 drops SIGTERM, so the entrypoint becomes our wrapper (container/sm_pid1.py, shipped in the code
# channel), which runs the SDK's bash and driver unchanged and passes SIGTERM on to the job.
SDK_DRIVER = "/opt/ml/input/data/sm_drivers/sm_train.sh"
SDK_ENTRYPOINT = ["/bin/bash"]
SDK_ARGUMENTS = ["-c", f"chmod +x {SDK_DRIVER} && {SDK_DRIVER}"]
PID1_SCRIPT = "sm_pid1.py"
PID1_SOURCE = REPO_ROOT / "container" / PID1_SCRIPT
PID1_ENTRYPOINT = ["python3", str(CHANNEL_ROOT / "code" / PID1_SCRIPT), *SDK_ENTRYPOINT]

# Metric definitions: CloudWatch scrapes these from the job's `metrics: key=value ...` lines (job.logs.metrics_line
# prints plain decimals). `\b` keeps `loss=` from matching inside `eval_loss=`.
_METRIC_KEYS = {
    "train:loss": "loss",
    "train:learning_rate": "learning_rate",
    "train:grad_norm": "grad_norm",
    "eval:loss": "eval_loss",
    **{
        f"{who}:{m}": f"{who}_{m}" for who in ("base", "finetuned") for m in ("rouge1", "rouge2", "rougeL", "rougeLsum")
    },
}


def metric_regex(key: str) -> str:
    """The regex that reads `key`'s value from the job's `metrics:` lines."""
    return rf"metrics: .*\b{key}=([0-9.]+)"


def metric_definitions() -> list[dict[str, str]]:
    return [{"Name": name, "Regex": metric_regex(key)} for name, key in _METRIC_KEYS.items()]


# ----------------------------------------------------------------------------------------------------------------
# The config as hyperparameters


def encode_value(value: Any) -> str:
    """A config value as a hyperparameter string that the job's `parse_scalar` reads back to the same value."""
    if isinstance(value, str) and config_mod.parse_scalar(value) == value:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and config_mod.parse_scalar(str(value)) == value:
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML: lists, null, booleans and awkward strings


def hyperparameters_for(cfg: Config) -> dict[str, str]:
    """The resolved config as dotted-key hyperparameters: every value that differs from the defaults, so the job
    rebuilds exactly this config from them alone (an image that only runs `train`) and the console shows what
    this run changed."""
    defaults = config_mod.flatten(Config().to_dict())
    return {k: encode_value(v) for k, v in config_mod.flatten(cfg.to_dict()).items() if defaults.get(k) != v}


# ----------------------------------------------------------------------------------------------------------------
# Source folder for the DLC: the job package, the image's pins (the DLC keeps its torch), the resolved config


def _checkout_file(path: Path) -> Path:
    """A file of the project's checkout that the code channel ships (it is not part of the installed packages)."""
    if not path.is_file():
        raise LaunchError(
            f"{path} is missing: `--image dlc` ships it in the code channel; launch from a checkout of the project "
            "or use --image with our image"
        )
    return path


def job_requirements() -> list[str]:
    """The image's pins (container/requirements.txt), which the DLC's driver installs at every start. No torch:
    sm_pid1.py holds the DLC's CUDA build of torch as it is, as the Dockerfile holds its base's."""
    lines = _checkout_file(PINS).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def code_channel_files(cfg: Config) -> dict[str, str]:
    """The code channel's own files besides the `job/` package, by name, with their text."""
    return {
        CONFIG_FILE: cfg.to_yaml(),
        REQUIREMENTS_FILE: "\n".join(job_requirements()) + "\n",
        ENTRY_SCRIPT: ENTRY_SCRIPT_TEXT,
        PID1_SCRIPT: _checkout_file(PID1_SOURCE).read_text(encoding="utf-8"),
    }


def stage_source(cfg: Config, folder: Path) -> Path:
    """Write the code channel: `job/` (sources only), the resolved config.yaml (all the config the job gets on the
    DLC), requirements.txt, the entry script the torchrun driver starts on multi-GPU jobs and the PID-1 wrapper."""
    shutil.copytree(JOB_PACKAGE, folder / "job", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name, text in code_channel_files(cfg).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Input channels for a local or S3 data set / model folder


@dataclass
class Channel:
    name: str
    source: str
    """A local file or folder (uploaded once per content hash) or an s3:// URI (used as it is)."""
    container_path: str
    """What the config value becomes inside the container."""
    s3_uri: str = ""
    """Where the channel's data is in S3 (for local sources: <output>/inputs/<name>/<content hash>/)."""


def content_hash(path: Path) -> str:
    """sha256 over relative names and bytes of a file or a folder's files: the same data is uploaded once."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path.parent if path.is_file() else path)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _channel(name: str, source: str, output: str) -> Channel:
    if source.startswith("s3://"):
        key = source.rstrip("/")
        is_file = PurePosixPath(key).suffix != "" and not source.endswith("/")
        inside = CHANNEL_ROOT / name / PurePosixPath(key).name if is_file else CHANNEL_ROOT / name
        return Channel(name, source, str(inside), s3_uri=source)
    path = Path(source).expanduser().resolve()
    inside = CHANNEL_ROOT / name / path.name if path.is_file() else CHANNEL_ROOT / name
    return Channel(name, str(path), str(inside), s3_uri=f"{output}/inputs/{name}/{content_hash(path)}/")


def channels_for(cfg: Config, output: str, model_s3: str | None = None) -> tuple[Config, list[Channel]]:
    """Local or S3 data sets and model folders become input channels; the config then points inside the container.
    `model_s3`: weights staged by `stage-model`, read by the job as `model.name=channel:model`."""
    channels = []
    data, model = cfg.data.dataset, cfg.model.name
    if data.startswith("s3://") or (not data.startswith(("builtin:", "channel:")) and Path(data).expanduser().exists()):
        channels.append(_channel("data", data, output))
    changes = {ch.name: ch.container_path for ch in channels}
    if model_s3:
        channels.append(Channel("model", model_s3, str(CHANNEL_ROOT / "model"), s3_uri=model_s3))
        changes["model"] = "channel:model"
    elif model.startswith("s3://") or (not model.startswith("builtin:") and Path(model).expanduser().is_dir()):
        channels.append(_channel("model", model, output))
        changes["model"] = channels[-1].container_path
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, dataset=changes.get("data", data)),
        model=dataclasses.replace(cfg.model, name=changes.get("model", model)),
    )
    return cfg, channels


# ----------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    cfg: Config
    """The config the job will run: output.uri, data and model already pointing where they are on SageMaker."""
    config_name: str
    region: str
    instance_type: str
    instance_count: int
    image: str
    own_image: bool
    output: str
    """s3://bucket/prefix under which inputs, checkpoints, SageMaker's output and the run folder go."""
    role: str
    base_job_name: str
    spot: bool
    max_run_s: int
    max_wait_s: int | None
    volume_gb: int
    processes_per_node: int = 1
    """Training processes per instance: its GPU count under torchrun (DLC), 1 for our own image."""
    environment: dict[str, str] = field(default_factory=dict)
    channels: list[Channel] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    account: account.Account = field(default_factory=account.Account)
    """The company-account options: VPC, network isolation, KMS keys, retries, TensorBoard."""

    @property
    def distributed(self) -> bool:
        return self.processes_per_node * self.instance_count > 1

    @property
    def bucket(self) -> str:
        return self.output.removeprefix("s3://").split("/", 1)[0]

    @property
    def prefix(self) -> str:
        return self.output.removeprefix("s3://").partition("/")[2].strip("/")

    @property
    def hyperparameters(self) -> dict[str, str]:
        """Our own image gets the config as dotted-key hyperparameters; the DLC none (its config is config.yaml)."""
        return hyperparameters_for(self.cfg) if self.own_image else {}

    @property
    def jobs_uri(self) -> str:
        return f"{self.output}/jobs"


def base_job_name(name: str | None, cfg: Config) -> str:
    """`--name` or `dialogsum-<config hash>`; SageMaker appends `-<yyyymmddHHMMSS>` to make the job name."""
    base = name or f"dialogsum-{cfg.hash()}"
    return re.sub(r"[^a-zA-Z0-9-]+", "-", base).strip("-")[:48]


DLC_LOOKUP_INSTANCE = "ml.g5.xlarge"
"""The DLC has no CPU build of transformers 5.x: a CPU instance runs the GPU build, whose torch runs on the CPU."""


def default_image(region: str, instance_type: str) -> str:
    from sagemaker.core import image_uris

    if catalog.instance(instance_type).gpu_count == 0:
        instance_type = DLC_LOOKUP_INSTANCE
    return image_uris.retrieve("huggingface", region=region, instance_type=instance_type, image_scope="training", **DLC)


def tags_for(cfg: Config, config_name: str) -> dict[str, str]:
    """The project, the config it ran and its hash, and where the run folder (named after the job) lands; any
    character a tag may not hold (`my(run).yaml`) becomes `-`."""
    tags = {"project": PROJECT, "config": Path(config_name).name, "config-hash": cfg.hash(), "runs": cfg.output.uri}
    return {key: service_model.tag_safe(value)[:256] for key, value in tags.items()}


# ----------------------------------------------------------------------------------------------------------------
# The request: a preview without AWS, and the real thing through ModelTrainer


def _s3_channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }


def preview_request(plan: Plan, job_name: str) -> dict[str, Any]:
    """The CreateTrainingJob request ModelTrainer will send for this plan (with `job_name` as the job's name)."""
    staging = f"{plan.output}/{plan.base_job_name}/{job_name}"
    algorithm: dict[str, Any] = {
        "TrainingInputMode": "File",
        "TrainingImage": plan.image,
        "MetricDefinitions": metric_definitions(),
    }
    channels = [_s3_channel(ch.name, ch.s3_uri) for ch in plan.channels]
    if not plan.own_image:
        algorithm["ContainerEntrypoint"] = list(PID1_ENTRYPOINT)
        algorithm["ContainerArguments"] = list(SDK_ARGUMENTS)
        channels += [
            _s3_channel("code", f"{staging}/input/code"),
            _s3_channel("sm_drivers", f"{staging}/input/sm_drivers"),
        ]
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "HyperParameters": plan.hyperparameters,
        "AlgorithmSpecification": algorithm,
        "RoleArn": plan.role,
        "OutputDataConfig": {"S3OutputPath": plan.jobs_uri, "CompressionType": "NONE"},
        "ResourceConfig": {
            "InstanceType": plan.instance_type,
            "InstanceCount": plan.instance_count,
            "VolumeSizeInGB": plan.volume_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": plan.max_run_s}
        | ({"MaxWaitTimeInSeconds": plan.max_wait_s} if plan.max_wait_s else {}),
        "Tags": [{"Key": k, "Value": v} for k, v in plan.tags.items()],
        "EnableManagedSpotTraining": plan.spot,
    }
    if channels:  # ModelTrainer sends none rather than an empty list, which the service refuses
        request["InputDataConfig"] = channels
    if plan.spot:
        request["CheckpointConfig"] = {"S3Uri": f"{staging}/checkpoints", "LocalPath": CHECKPOINT_DIR}
    if plan.environment:
        request["Environment"] = dict(plan.environment)
    if kms := account.output_kms(plan.account):
        request["OutputDataConfig"]["KmsKeyId"] = kms
    if volume_kms := account.volume_kms(plan.account, plan.instance_type):
        request["ResourceConfig"]["VolumeKmsKeyId"] = volume_kms
    request.update(account.training_fields(plan.account, plan.instance_type, plan.instance_count, plan.output))
    return request


def _pid1_entrypoint(params: dict[str, Any], **_: Any) -> None:
    """botocore handler: the SDK's driver request gets our PID-1 wrapper as its entrypoint, arguments unchanged."""
    algorithm = params.get("AlgorithmSpecification", {})
    if algorithm.get("ContainerEntrypoint") == SDK_ENTRYPOINT and algorithm.get("ContainerArguments") == SDK_ARGUMENTS:
        algorithm["ContainerEntrypoint"] = list(PID1_ENTRYPOINT)


def wrap_driver(boto_session: Any) -> None:
    """ModelTrainer hard-codes the driver's entrypoint (`/bin/bash`), so it is set on the request it sends: first
    among the session's CreateTrainingJob handlers, so every later one (and the service) sees the final request."""
    boto_session.events.register_first(
        "provide-client-params.sagemaker.CreateTrainingJob", _pid1_entrypoint, unique_id=f"{PROJECT}-pid1"
    )


def model_trainer(plan: Plan, session: Any, source_dir: Path | None):
    """SDK v3's ModelTrainer for the plan. `session` is a sagemaker Session whose default bucket and prefix are the
    plan's output, so the code, drivers and checkpoints land under it too."""
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        MetricDefinition,
        Networking,
        OutputDataConfig,
        RetryStrategy,
        SourceCode,
        StoppingCondition,
        Tag,
        TensorBoardOutputConfig,
    )
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    source, distributed = None, None
    if source_dir is not None and plan.distributed:
        # The SDK's torchrun driver: one process per GPU, and the rendezvous across instances.
        source = SourceCode(source_dir=str(source_dir), requirements=REQUIREMENTS_FILE, entry_script=ENTRY_SCRIPT)
        distributed = Torchrun(process_count_per_node=plan.processes_per_node)
    elif source_dir is not None:
        source = SourceCode(source_dir=str(source_dir), requirements=REQUIREMENTS_FILE, command=COMMAND)
    if source is not None:
        wrap_driver(session.boto_session)
    acct = plan.account
    fields = account.training_fields(acct, plan.instance_type, plan.instance_count, plan.output)
    vpc = fields.get("VpcConfig", {})
    networking = None
    if fields.keys() & {"VpcConfig", "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption"}:
        networking = Networking(
            subnets=vpc.get("Subnets"),
            security_group_ids=vpc.get("SecurityGroupIds"),
            enable_network_isolation=fields.get("EnableNetworkIsolation"),
            enable_inter_container_traffic_encryption=fields.get("EnableInterContainerTrafficEncryption"),
        )
    trainer = ModelTrainer(
        distributed=distributed,
        sagemaker_session=session,
        role=plan.role,
        base_job_name=plan.base_job_name,
        training_image=plan.image,
        source_code=source,
        compute=Compute(
            instance_type=plan.instance_type,
            instance_count=plan.instance_count,
            volume_size_in_gb=plan.volume_gb,
            volume_kms_key_id=account.volume_kms(acct, plan.instance_type),
            enable_managed_spot_training=plan.spot,
        ),
        networking=networking,
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=plan.max_run_s, max_wait_time_in_seconds=plan.max_wait_s
        ),
        # No S3 URI: the SDK makes one per job under the session's bucket and prefix, so a restarted spot job
        # resumes from its own checkpoints and never from another run's.
        checkpoint_config=CheckpointConfig(s3_uri=None, local_path=CHECKPOINT_DIR) if plan.spot else None,
        output_data_config=OutputDataConfig(
            s3_output_path=plan.jobs_uri, compression_type="NONE", kms_key_id=account.output_kms(acct)
        ),
        input_data_config=[InputData(channel_name=ch.name, data_source=ch.s3_uri) for ch in plan.channels] or None,
        environment=dict(plan.environment),
        hyperparameters=plan.hyperparameters or None,
        tags=[Tag(key=k, value=v) for k, v in plan.tags.items()],
    )
    if "RetryStrategy" in fields:
        trainer.with_retry_strategy(RetryStrategy(maximum_retry_attempts=acct.retries))
    if tensorboard := fields.get("TensorBoardOutputConfig"):
        trainer.with_tensorboard_output_config(
            TensorBoardOutputConfig(s3_output_path=tensorboard["S3OutputPath"], local_path=tensorboard["LocalPath"])
        )
    return trainer.with_metric_definitions(
        [MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in metric_definitions()]
    )
