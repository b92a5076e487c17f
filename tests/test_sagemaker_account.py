"""`launch sagemaker` in a company account and within a budget: the VPC, network isolation, KMS keys, retries and
TensorBoard options in the request ModelTrainer really sends (captured under moto, with the SDK's role validation
on, and checked against botocore's service model), the combinations that cannot work refused in one line before
anything is uploaded or created, the cost guards, and the CPU test job.

AWS is moto, in-process, through the `aws` fixture of tests/test_sagemaker_checks.py (Service Quotas and IAM's
policy simulator answered at botocore's edge, as described there).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from launch import catalog, service_model
from launch.sagemaker import account, budget, checks
from launch.sagemaker import cli as sm_cli
from tests.test_sagemaker_checks import ACCOUNT, BUCKET, IMAGE, REGION, ROLE_ARN, _objects, _one_error_line, aws

__all__ = ["aws"]  # the fixture, used by name

KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VPC = ["--subnets", "subnet-0abc1234", "subnet-0def5678", "--security-groups", "sg-0abc1234"]
LLAMA = "llama-3.2-3b-qlora"


def _launch(*extra: str, instance: str = "ml.g5.xlarge") -> list[str]:
    return ["--instance", instance, "--region", REGION, "--role", ROLE_ARN, "--output", f"s3://{BUCKET}/exp",
            "--no-wait", *extra]  # fmt: skip


def _dialogues(tmp_path: Path) -> Path:
    data = tmp_path / "dialogues.jsonl"
    data.write_text(json.dumps({"id": "1", "dialogue": "#Person1#: hi", "summary": "hi"}) + "\n")
    return data


def _staged_model(tmp_path: Path) -> Path:
    """A model folder as staged weights look: its config.json (the launcher's estimate reads the shape there)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shape = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 256, "vocab_size": 512}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(shape))
    return folder


# ------------------------------------------------------------------------------------------------------------
# Each option in the request sent, equal to the dry run's, valid for the service model


def _case(name: str, tmp_path: Path) -> tuple[list[str], str]:
    """(options, instance) of each way the account options are combined."""
    if name == "vpc-kms-retries-dlc":
        return [*VPC, "--kms-key", KEY_ARN, "--retries", "3", "--spot"], "ml.g5.xlarge"
    if name == "isolated-own-image-cpu":
        return [*VPC, "--network-isolation", "--image", IMAGE, "--kms-key", "alias/ml-team",
                f"model.name={_staged_model(tmp_path)}", f"data.dataset={_dialogues(tmp_path)}"], "ml.m5.large"  # fmt: skip
    if name == "several-instances":
        return ["--instance-count", "2", "--volume-kms-key", KEY_ARN, "--no-tensorboard"], "ml.m5.large"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["vpc-kms-retries-dlc", "isolated-own-image-cpu", "several-instances"])
def test_account_options_reach_the_request_sent(
    aws, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options, instance = _case(name, tmp_path)
    argv = _launch("--config", "test", *options, instance=instance)
    assert sm_cli.main([*argv, "--dry-run"]) == 0, capsys.readouterr().err
    shown = json.loads(capsys.readouterr().out)
    assert aws["requests"] == []
    assert sm_cli.main(argv) == 0, capsys.readouterr().err
    (sent,) = aws["requests"]
    filled = {service_model.STAMP_PLACEHOLDER: sent["TrainingJobName"].rsplit("-", 1)[1]}
    assert service_model.with_placeholders_filled(shown, filled) == sent
    assert checks.request_problems(sent) == []  # botocore's service model: types, enums, limits, patterns

    if name == "vpc-kms-retries-dlc":
        assert sent["VpcConfig"] == {
            "Subnets": ["subnet-0abc1234", "subnet-0def5678"],
            "SecurityGroupIds": ["sg-0abc1234"],
        }
        assert sent["OutputDataConfig"]["KmsKeyId"] == KEY_ARN
        assert "VolumeKmsKeyId" not in sent["ResourceConfig"]  # g5: NVMe storage, encrypted by its hardware
        assert sent["RetryStrategy"] == {"MaximumRetryAttempts": 3}
        assert sent["TensorBoardOutputConfig"] == {
            "LocalPath": account.TENSORBOARD_DIR,
            "S3OutputPath": f"s3://{BUCKET}/exp/tensorboard",
        }
        assert "EnableNetworkIsolation" not in sent and "EnableInterContainerTrafficEncryption" not in sent
        # The job writes its event files where SageMaker syncs them from (config.yaml of the code channel).
        code = next(c for c in sent["InputDataConfig"] if c["ChannelName"] == "code")
        key = code["DataSource"]["S3DataSource"]["S3Uri"].split(f"s3://{BUCKET}/", 1)[1] + "/config.yaml"
        shipped = aws["session"].client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        assert f"tensorboard_dir: {account.TENSORBOARD_DIR}" in shipped
    elif name == "isolated-own-image-cpu":
        assert sent["EnableNetworkIsolation"] is True
        assert sent["ResourceConfig"]["InstanceType"] == "ml.m5.large"
        assert sent["ResourceConfig"]["VolumeKmsKeyId"] == sent["OutputDataConfig"]["KmsKeyId"] == "alias/ml-team"
        assert {c["ChannelName"] for c in sent["InputDataConfig"]} == {"data", "model"}  # no code channel: our image
        hps = sent["HyperParameters"]
        assert hps["model.name"] == "/opt/ml/input/data/model" and "output.uri" not in hps  # run via model output
        assert hps["output.tensorboard_dir"] == account.TENSORBOARD_DIR
        assert sent["Environment"] == {"HF_HUB_OFFLINE": "1"}
    else:
        assert sent["EnableInterContainerTrafficEncryption"] is True
        assert sent["ResourceConfig"]["VolumeKmsKeyId"] == KEY_ARN and "KmsKeyId" not in sent["OutputDataConfig"]
        assert "TensorBoardOutputConfig" not in sent


def test_the_fields_serve_the_model_and_transform_requests_too() -> None:
    """The same option -> field functions build CreateModel's and CreateTransformJob's fields, valid there."""
    acct = account.Account(
        subnets=("subnet-0abc1234",), security_groups=("sg-0abc1234",), network_isolation=True, kms_key="alias/k"
    )
    model = {
        "ModelName": "dialogsum-x",
        "ExecutionRoleArn": ROLE_ARN,
        "PrimaryContainer": {"Image": IMAGE},
        "VpcConfig": account.vpc_config(acct),
        "EnableNetworkIsolation": account.network_isolation(acct),
    }
    assert service_model.problems("sagemaker", "CreateModel", model) == []
    transform = {
        "TransformJobName": "dialogsum-x",
        "ModelName": "dialogsum-x",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in"}}},
        "TransformOutput": {"S3OutputPath": "s3://b/out", "KmsKeyId": account.output_kms(acct)},
        "TransformResources": {
            "InstanceType": "ml.m5.large",
            "InstanceCount": 1,
            "VolumeKmsKeyId": account.volume_kms(acct, "ml.m5.large"),
        },
    }
    assert service_model.problems("sagemaker", "CreateTransformJob", transform) == []
    assert account.volume_kms(acct, "ml.g5.xlarge") is None  # NVMe: no volume key


# ------------------------------------------------------------------------------------------------------------
# Combinations that cannot work: one line in the dry run, and nothing uploaded or created on a real launch


DOCS = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
# Each row of the launcher's table in docs/bad-inputs.md, and the options that make it, after
# `--config test --instance ml.g5.xlarge data.dataset=<a local file>`.
REFUSED = {
    "network isolation with the DLC": ["--network-isolation"],
    "network isolation with a hub model": [
        "--network-isolation", "--image", IMAGE, "model.name=meta-llama/Llama-3.2-1B-Instruct"],
    "network isolation with a hub data set": ["--network-isolation", "--image", IMAGE, "data.dataset=knkarthick/dialogsum"],
    "network isolation with a token secret": ["--network-isolation", "--image", IMAGE, "--hf-token-secret", "team/hf"],
    "network isolation with an S3 output.uri": ["--network-isolation", "--image", IMAGE, "output.uri=s3://b/runs"],
    "network isolation with MLflow tracking": [
        "--network-isolation", "--image", IMAGE, "--mlflow", "https://mlflow.example.com"],
    "a volume key on an NVMe instance": ["--volume-kms-key", KEY_ARN],
    "a budget below the worst case": ["--budget", "1"],
    "subnets without security groups": ["--subnets", "subnet-0abc1234"],
    "a security group that is not an id": ["--subnets", "subnet-0abc1234", "--security-groups", "default"],
    "a KMS key that is not one": ["--kms-key", "mykey"],
    "too many retries": ["--retries", "40"],
    "a GPU preset on a CPU instance": ["--config", LLAMA, "--instance", "ml.m5.large"],
}  # fmt: skip


def documented_refusals() -> dict[str, str]:
    """The launcher's table in docs/bad-inputs.md: row name -> the error line, word for word."""
    text = DOCS.read_text(encoding="utf-8").split("### `python -m launch sagemaker`", 1)[1]
    text = re.split(r"\n##+ ", text, maxsplit=1)[0]  # up to the next section
    rows = [line.strip().strip("|").split("|", 1) for line in text.splitlines() if line.startswith("| ")]
    return {name.strip(): said.strip().strip("`") for name, said in rows[1:]}


def test_the_docs_list_every_refusal() -> None:
    assert set(documented_refusals()) == set(REFUSED)


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_in_one_line_before_anything_is_sent(
    aws, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = documented_refusals()[case]
    options = ["--config", "test", f"data.dataset={_dialogues(tmp_path)}", *REFUSED[case]]  # a launch uploads data
    rc = sm_cli.main(["--instance", "ml.g5.xlarge", "--region", REGION, "--dry-run", *options])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert _one_error_line(out.err) == expected

    aws["session"].client("secretsmanager").create_secret(Name="team/hf", SecretString="hf_" + "x" * 30)
    assert sm_cli.main(_launch(*options)) == 2  # a case's own --config or --instance comes last, and wins
    assert _one_error_line(capsys.readouterr().err) == expected
    assert aws["requests"] == [] and _objects(aws["session"]) == []  # nothing uploaded, no job created


# ------------------------------------------------------------------------------------------------------------
# Cost guards


def _dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict, str]:
    rc = sm_cli.main(["--region", REGION, "--dry-run", *argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out), out.err


def test_max_run_follows_the_estimate_and_the_worst_case_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from job import config

    request, err = _dry_run(capsys, "--config", LLAMA, "--instance", "ml.g5.xlarge", "--spot")
    hours = catalog.estimate_cost(config.resolve(LLAMA), "ml.g5.xlarge", False, 1, all_gpus=True)["hours"]
    max_run = math.ceil(3 * hours * 4) / 4
    assert 1 < max_run < 24 and max_run >= 3 * hours
    stop = request["StoppingCondition"]
    assert stop == {"MaxRuntimeInSeconds": round(max_run * 3600), "MaxWaitTimeInSeconds": round(2 * max_run * 3600)}
    price = catalog.prices()["on_demand"]["ml.g5.xlarge"]
    assert f"--max-run {max_run:g} h: 3 x the estimate" in err
    assert f"worst case: ${2 * max_run * price:.2f} (--max-wait {2 * max_run:g} h x ${price:.3f}/h on demand)" in err

    # An explicit --max-run is kept, and a budget it fits is shown (a short run's hour: the CPU test job below).
    request, err = _dry_run(capsys, "--config", "test", "--instance", "ml.g5.xlarge", "--max-run", "2", "--budget", "3")
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert f"worst case: ${2 * price:.2f} (--max-run 2 h x ${price:.3f}/h on demand)" in err
    assert "within --budget $3" in err and "3 x the estimate" not in err


def test_the_budget_names_the_limit_that_fits() -> None:
    worst = budget.worst_case("ml.g5.xlarge", 2, 10 * 3600, None)
    assert worst.usd == pytest.approx(10 * 2 * catalog.prices()["on_demand"]["ml.g5.xlarge"])
    assert budget.budget_problem(worst, 100) is None
    problem = budget.budget_problem(worst, 20)
    assert problem is not None and "lower --max-run to 7 h or less" in problem  # 7 h x 2 x $1.408 = $19.71


# ------------------------------------------------------------------------------------------------------------
# The CPU test job


def test_the_test_job_runs_on_a_cpu_instance_for_cents(capsys: pytest.CaptureFixture[str]) -> None:
    request, err = _dry_run(capsys, "--config", "test", "--instance", "ml.m5.large")
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.large"
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith("763104351884.dkr.ecr.us-east-1.amazonaws")
    assert "estimate: ~0.2" in err and "on ml.m5.large (CPU)" in err
    cost = float(err.split("cost: ~$", 1)[1].split(" ", 1)[0])
    assert 0 < cost < 0.05
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}  # 3 x ~0.2 h, raised to an hour
    assert "worst case: $0.12 (--max-run 1 h x $0.115/h on demand)" in err
