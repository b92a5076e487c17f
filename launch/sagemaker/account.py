"""What a company account's policies ask of a SageMaker request: a VPC, network isolation, customer-managed KMS
keys, inter-container traffic encryption, retries after internal errors, TensorBoard synced to S3 while training.

The options become request fields here, one function per field, named as the API names them: CreateTrainingJob
uses them all; CreateModel takes `vpc_config` and `network_isolation`, CreateEndpointConfig and CreateTransformJob
take the keys (`output_kms`, `volume_kms`), so the deploy and transform requests build the same fields from the
same options. `problems` refuses, one line each, every combination that cannot work, before anything is sent.
No AWS call. Imports no torch.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import config as config_mod
from launch import catalog

NVME_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p5")
"""Instance families whose NVMe instance storage SageMaker uses instead of an EBS volume: no --volume-size, and no
VolumeKmsKeyId (the hardware encrypts that storage itself; CreateTrainingJob refuses a key for it)."""

TENSORBOARD_DIR = "/opt/ml/output/tensorboard"
"""Where the job writes its TensorBoard event files on SageMaker (output.tensorboard_dir): the TensorBoardOutputConfig
LocalPath, which SageMaker uploads to S3 while the job runs."""

KMS_KEY = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}|alias/[a-zA-Z0-9/_-]+"
    r"|arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key/(mrk-)?[0-9a-f-]+|alias/[a-zA-Z0-9/_-]+))$"
)
SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
SECURITY_GROUP = re.compile(r"^sg-[0-9a-f]{8,17}$")
MAX_SUBNETS, MAX_SECURITY_GROUPS, MAX_RETRIES = 16, 5, 30  # VpcConfig's and RetryStrategy's limits


@dataclass(frozen=True)
class Account:
    """The account-policy options of one launch."""

    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    network_isolation: bool = False
    kms_key: str | None = None
    """Output (and the volume where the instance has an EBS one)."""
    volume_kms_key: str | None = None
    """The volume's key, asked for explicitly: refused on instances with NVMe storage."""
    retries: int | None = None
    tensorboard: bool = True


def add_options(p: argparse.ArgumentParser, training: bool = True) -> None:
    """The account-policy options of `python -m launch sagemaker` (docs/sagemaker.md, "In a company account");
    `training=False`: those deploy and transform take (no --retries, no --tensorboard: their APIs have neither)."""
    g = p.add_argument_group("company account (docs/sagemaker.md)")
    g.add_argument("--subnets", nargs="+", default=[], metavar="SUBNET", help="run in these VPC subnets (VpcConfig)")
    g.add_argument("--security-groups", nargs="+", default=[], metavar="SG", help="with these security groups")
    g.add_argument(
        "--network-isolation",
        action="store_true",
        help="no network inside the job: needs our own image, a staged model and local or S3 data"
        if training
        else "no network inside the container: a Hub base model must come staged (--model-s3), no token secret",
    )
    g.add_argument("--kms-key", metavar="KEY", help="KMS key (id, ARN or alias) for the output, and the volume on EBS")
    g.add_argument(
        "--volume-kms-key", metavar="KEY", help="KMS key for the EBS volume only (not on NVMe instances: g4dn, g5, ...)"
    )
    if not training:
        return
    g.add_argument("--retries", type=int, metavar="N", help="restart the job up to N times after an internal error")
    g.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sync TensorBoard logs to <output>/tensorboard while training (default on)",
    )


def from_args(args: argparse.Namespace) -> Account:
    return Account(
        subnets=tuple(args.subnets),
        security_groups=tuple(args.security_groups),
        network_isolation=args.network_isolation,
        kms_key=args.kms_key,
        volume_kms_key=args.volume_kms_key,
        retries=getattr(args, "retries", None),
        tensorboard=getattr(args, "tensorboard", False),
    )


def has_nvme(instance_type: str) -> bool:
    parts = instance_type.split(".")
    return len(parts) == 3 and parts[1] in NVME_FAMILIES


# ----------------------------------------------------------------------------------------------------------------
# What the job needs from the network, and whether isolation takes it away


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def hub_model(cfg: config_mod.Config) -> bool:
    """The model comes from the Hugging Face Hub (not built in, not staged in S3, not a local folder or channel)."""
    name = cfg.model.name
    return not (name.startswith(("builtin:", "s3://", "channel:")) or _is_local(name))


def hub_data(cfg: config_mod.Config) -> bool:
    name = cfg.data.dataset
    return not (name.startswith(("builtin:", "s3://", "channel:")) or _is_local(name))


ISOLATED = "--network-isolation: the {what} has no network"


def staging_problem(model_name: str, what: str = "job", also: str = "") -> str:
    """A Hub model the job or serving container would download, refused under isolation: stage it once."""
    return (
        f"{ISOLATED.format(what=what)} to download {model_name} from the Hugging Face Hub; stage the weights in S3 "
        f"once (`python -m launch sagemaker stage-model MODEL_ID --revision SHA`) and pass --model-s3 URI{also}"
    )


def secret_problem(what: str = "job") -> str:
    return (
        f"{ISOLATED.format(what=what)} to read --hf-token-secret from Secrets Manager; drop it (a staged model needs "
        "none)"
    )


def isolation_problems(
    acct: Account,
    cfg: config_mod.Config,
    image: str,
    secret: str | None,
    model_s3: str | None = None,
    tracking: str | None = None,
) -> list[str]:
    """Network isolation leaves the job no internet, no AWS endpoint and no credentials: everything it reads must be
    a channel, and it can publish only through SageMaker's own model output."""
    if not acct.network_isolation:
        return []
    why = ISOLATED.format(what="job")
    problems = []
    if image == "dlc":
        problems.append(
            f"{why}, and the `dlc` image installs our requirements with pip at start; use our own image "
            "(--image ECR_URI, `python -m launch image push`)"
        )
    if hub_model(cfg) and not model_s3:
        problems.append(
            staging_problem(
                f"model.name={cfg.model.name}",
                also=", or pass model.name=s3://BUCKET/PREFIX (or a local folder), which travels as the `model` channel",
            )
        )
    if hub_data(cfg):
        problems.append(
            f"{why} to download data.dataset={cfg.data.dataset}; give a local file or folder or an s3:// URI, "
            "which travels as the `data` channel"
        )
    if secret:
        problems.append(secret_problem())
    if tracking:
        problems.append(
            f"{why} to reach the MLflow tracking server (--mlflow {tracking}); drop --mlflow (the run's metrics come "
            "back in its run folder), or launch without --network-isolation"
        )
    if cfg.output.uri.startswith(("s3://", "hf://")):
        problems.append(
            f"{why} to publish to output.uri={cfg.output.uri}; leave output.uri unset: the run folder then comes "
            "back through SageMaker's model output (<output>/jobs/<job name>/output/model/), where fetch finds it"
        )
    return problems


def serving_isolation_problems(acct: Account, hub_base: str | None, secret: str | None) -> list[str]:
    """Network isolation of an endpoint's or transform job's container: it reads only its model data, so a Hub base
    model (`hub_base`: the one it would download, None when the run holds its model or it comes staged) and the
    token's secret are refused."""
    if not acct.network_isolation:
        return []
    return ([staging_problem(hub_base, what="container")] if hub_base else []) + (
        [secret_problem(what="container")] if secret else []
    )


def option_problems(acct: Account, instance_type: str) -> list[str]:
    """The options themselves, one line each: ids, keys, limits, and the volume key on NVMe instances."""
    found = []
    if bool(acct.subnets) != bool(acct.security_groups):
        given, missing = ("--subnets", "--security-groups") if acct.subnets else ("--security-groups", "--subnets")
        found.append(f"{given} needs {missing} too: a job in a VPC has both (VpcConfig)")
    for option, values, pattern, limit, example in (
        ("--subnets", acct.subnets, SUBNET, MAX_SUBNETS, "subnet-0abc1234"),
        ("--security-groups", acct.security_groups, SECURITY_GROUP, MAX_SECURITY_GROUPS, "sg-0abc1234"),
    ):
        bad = [v for v in values if not pattern.match(v)]
        if bad:
            found.append(f"{option} {' '.join(bad)}: not an id of that kind (they look like {example})")
        if len(values) > limit:
            found.append(f"{option}: {len(values)} given, SageMaker takes at most {limit}")
    for option, key in (("--kms-key", acct.kms_key), ("--volume-kms-key", acct.volume_kms_key)):
        if key is not None and not KMS_KEY.match(key):
            found.append(
                f"{option} {key}: not a KMS key id, key ARN or alias (1234abcd-12ab-34cd-56ef-1234567890ab, "
                "arn:aws:kms:REGION:ACCOUNT:key/ID, alias/NAME)"
            )
    if acct.volume_kms_key and has_nvme(instance_type):
        found.append(
            f"--volume-kms-key: {instance_type} keeps /opt/ml on NVMe instance storage, which its hardware encrypts, "
            "and SageMaker refuses VolumeKmsKeyId for it; drop --volume-kms-key (--kms-key still encrypts the output) "
            f"or use an instance with an EBS volume ({', '.join(catalog.CPU_INSTANCES)} for the test job)"
        )
    if acct.retries is not None and not 1 <= acct.retries <= MAX_RETRIES:
        found.append(f"--retries {acct.retries}: must be 1-{MAX_RETRIES}")
    return found


def problems(
    acct: Account,
    cfg: config_mod.Config,
    instance_type: str,
    image: str,
    secret: str | None,
    model_s3: str | None = None,
    tracking: str | None = None,
) -> list[str]:
    """Every option and combination of options that cannot work, one line each, found without AWS."""
    return option_problems(acct, instance_type) + isolation_problems(acct, cfg, image, secret, model_s3, tracking)


def notes(acct: Account, instance_type: str, output: bool = True) -> list[str]:
    """What the dry run says about the account options beyond the request itself; `output=False` for an endpoint,
    which writes no output the key could encrypt."""
    lines = []
    if acct.kms_key and not acct.volume_kms_key and has_nvme(instance_type):
        lines.append(
            f"--kms-key: {'encrypts the output; ' if output else ''}{instance_type} keeps /opt/ml on NVMe instance "
            "storage, which its hardware encrypts, so no VolumeKmsKeyId is sent"
        )
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Request fields, named as the API names them


def vpc_config(acct: Account) -> dict[str, Any] | None:
    """VpcConfig (CreateTrainingJob, CreateModel)."""
    if not acct.subnets:
        return None
    return {"SecurityGroupIds": list(acct.security_groups), "Subnets": list(acct.subnets)}


def network_isolation(acct: Account) -> bool | None:
    """EnableNetworkIsolation (CreateTrainingJob, CreateModel); None where not asked for."""
    return True if acct.network_isolation else None


def output_kms(acct: Account) -> str | None:
    """The KmsKeyId of the S3 output (OutputDataConfig, TransformOutput, an endpoint's data capture)."""
    return acct.kms_key


def volume_kms(acct: Account, instance_type: str) -> str | None:
    """VolumeKmsKeyId (ResourceConfig, TransformResources, CreateEndpointConfig's KmsKeyId): the volume's key where
    the instance has an EBS volume; --kms-key covers it there too."""
    if acct.volume_kms_key:
        return acct.volume_kms_key
    return None if has_nvme(instance_type) else acct.kms_key


def inter_container_encryption(instance_count: int) -> bool | None:
    """EnableInterContainerTrafficEncryption: on whenever instances talk to each other (torchrun across them)."""
    return True if instance_count > 1 else None


def retry_strategy(acct: Account) -> dict[str, int] | None:
    """RetryStrategy: SageMaker restarts the job after an internal server error, up to N times."""
    return {"MaximumRetryAttempts": acct.retries} if acct.retries else None


def tensorboard_output(acct: Account, output: str) -> dict[str, str] | None:
    """TensorBoardOutputConfig: the job's event files in TENSORBOARD_DIR, uploaded to <output>/tensorboard."""
    if not acct.tensorboard:
        return None
    return {"LocalPath": TENSORBOARD_DIR, "S3OutputPath": f"{output.rstrip('/')}/tensorboard"}


def training_fields(acct: Account, instance_type: str, instance_count: int, output: str) -> dict[str, Any]:
    """The top-level CreateTrainingJob fields of the account options (the keys inside ResourceConfig and
    OutputDataConfig come from `volume_kms` and `output_kms`)."""
    fields = {
        "VpcConfig": vpc_config(acct),
        "EnableNetworkIsolation": network_isolation(acct),
        "EnableInterContainerTrafficEncryption": inter_container_encryption(instance_count),
        "RetryStrategy": retry_strategy(acct),
        "TensorBoardOutputConfig": tensorboard_output(acct, output),
    }
    return {k: v for k, v in fields.items() if v is not None}


def environment(acct: Account) -> dict[str, str]:
    """Without a network the Hugging Face libraries are told so, and never wait on a connection."""
    return {"HF_HUB_OFFLINE": "1"} if acct.network_isolation else {}


def job_config(acct: Account, cfg: config_mod.Config) -> config_mod.Config:
    """The job writes its TensorBoard event files where SageMaker syncs them from."""
    import dataclasses

    if not acct.tensorboard:
        return cfg
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, tensorboard_dir=TENSORBOARD_DIR))
