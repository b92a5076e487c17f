"""What `launch sagemaker` checks before anything is sent: the execution role by the SDK's own validation (kept on),
the whole CreateTrainingJob request against botocore's service model, the region; and the dry run equal to the
request ModelTrainer really sends.

AWS is moto, in-process. Two answers are faked at botocore's edge because moto has no stand-in for them: Service
Quotas' ListServiceQuotas, and IAM's SimulatePrincipalPolicy, which is answered by evaluating the role's policies
as moto stores them (Allow/Deny statements, `*` and `?` wildcards in actions and resources, the simulator's `*`
resource when none is asked), so the policy documented in docs/sagemaker.md is what the SDK's check sees.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from sagemaker.core.helper import iam_role_resolver

from launch import service_model
from launch.errors import LaunchError
from launch.sagemaker import checks
from launch.sagemaker import cli as sm_cli
from launch.sagemaker import request as req

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
BUCKET = "team-ml"
ROLE_NAME = "SageMakerTraining"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/dialogsum-qlora:0.1.0"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def documented_policy() -> dict[str, Any]:
    """The execution role's policy exactly as docs/sagemaker.md tells users to put it, placeholders filled in."""
    doc = (REPO / "docs" / "sagemaker.md").read_text(encoding="utf-8")
    found = re.search(r"aws iam put-role-policy [^\n]*--policy-document '(\{.*?\})'", doc, re.DOTALL)
    assert found, "docs/sagemaker.md has no `aws iam put-role-policy ... --policy-document '{...}'` block"
    text = found.group(1).replace("BUCKET", BUCKET).replace("REGION", REGION).replace("ACCOUNT", ACCOUNT)
    return json.loads(text)


# ------------------------------------------------------------------------------------------------------------
# IAM's policy simulator, evaluating the role's stored policies


def _glob(pattern: str, value: str, ignore_case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def evaluate(policies: list[dict[str, Any]], action: str, resource: str) -> str:
    """IAM's decision for one action on one resource: an explicit Deny wins, then any Allow, else implicitDeny."""
    decision = "implicitDeny"
    for policy in policies:
        statements = policy["Statement"] if isinstance(policy["Statement"], list) else [policy["Statement"]]
        for statement in statements:
            unknown = set(statement) - {"Sid", "Effect", "Action", "Resource"}
            assert not unknown, f"this simulator does not evaluate {unknown}; extend it before using them"
            if not any(_glob(p, action, ignore_case=True) for p in _listed(statement["Action"])):
                continue
            if not any(_glob(p, resource, ignore_case=False) for p in _listed(statement["Resource"])):
                continue
            if statement["Effect"] == "Deny":
                return "explicitDeny"
            decision = "allowed"
    return decision


def _role_policies(role_arn: str) -> list[dict[str, Any]]:
    iam = boto3.client("iam", region_name=REGION)
    name = role_arn.rsplit("/", 1)[1]
    return [
        iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
        for p in iam.list_role_policies(RoleName=name)["PolicyNames"]
    ]


def _simulator(asked: list[dict[str, Any]]):
    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["simulate"] = dict(params)
        asked.append(dict(params))

    def answer(context: dict[str, Any], **_: Any):
        params = context["simulate"]
        policies = _role_policies(params["PolicySourceArn"])
        results = [
            {
                "EvalActionName": action,
                "EvalResourceName": resource,
                "EvalDecision": evaluate(policies, action, resource),
            }
            for action in params["ActionNames"]
            for resource in params.get("ResourceArns") or ["*"]
        ]
        return AWSResponse("https://iam.amazonaws.com", 200, {}, None), {
            "EvaluationResults": results,
            "IsTruncated": False,
        }

    return [
        ("provide-client-params.iam.SimulatePrincipalPolicy", remember),
        ("before-call.iam.SimulatePrincipalPolicy", answer),
    ]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """moto with the SDK's role validation ON; the CreateTrainingJob request captured as botocore sends it. The root
    logger starts as in a fresh process: a job run in-process by an earlier test leaves its handlers there."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SAGEMAKER_VALIDATE_ROLE", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    captured: dict[str, Any] = {"requests": [], "simulated": []}

    def capture(params: dict[str, Any], **_: Any) -> None:
        captured["requests"].append(json.loads(json.dumps(params, default=str)))

    def quotas(**_: Any):
        names = ("ml.g5.xlarge for spot training job usage", "ml.g5.xlarge for training job usage")
        body = {"Quotas": [{"QuotaName": n, "QuotaCode": f"L-{i}", "Value": 1.0} for i, n in enumerate(names)]}
        return AWSResponse("https://servicequotas", 200, {}, None), body

    monkeypatch.setattr(
        botocore.handlers,
        "BUILTIN_HANDLERS",
        [
            *botocore.handlers.BUILTIN_HANDLERS,
            ("provide-client-params.sagemaker.CreateTrainingJob", capture),
            ("before-call.service-quotas.ListServiceQuotas", quotas),
            *_simulator(captured["simulated"]),
        ],
    )
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket=BUCKET)
        iam = session.client("iam")
        iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(TRUST))
        iam.put_role_policy(
            RoleName=ROLE_NAME, PolicyName="dialogsum-qlora", PolicyDocument=json.dumps(documented_policy())
        )
        captured["session"] = session
        yield captured


def _launch(*extra: str) -> list[str]:
    return ["--instance", "ml.g5.xlarge", "--region", REGION, "--role", ROLE_ARN, "--output", f"s3://{BUCKET}/exp",
            "--no-wait", *extra]  # fmt: skip


def _objects(session: boto3.Session) -> list[str]:
    return [o["Key"] for o in session.client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------------------
# The execution role: the SDK's own validation, on


def test_the_simulator_follows_iam() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Action": ["ec2:Describe*"], "Resource": "*"},
                            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"},
                            {"Effect": "Deny", "Action": "ec2:DescribeVpcs", "Resource": "*"}]}  # fmt: skip
    assert evaluate([policy], "EC2:DescribeSubnets", "*") == "allowed"
    assert evaluate([policy], "ec2:DescribeVpcs", "*") == "explicitDeny"
    assert evaluate([policy], "s3:GetObject", "*") == "implicitDeny"  # a scoped statement never matches `*`
    assert evaluate([policy], "s3:GetObject", "arn:aws:s3:::b/key") == "allowed"
    assert evaluate([policy], "s3:GetObject", "arn:aws:s3:::other/key") == "implicitDeny"


def test_the_documented_policy_passes_the_sdks_role_validation(aws, capsys: pytest.CaptureFixture[str]) -> None:
    assert sm_cli.main(_launch("--config", "test")) == 0, capsys.readouterr().err
    assert len(aws["requests"]) == 1
    # The SDK really asked IAM, for every action its check gates on.
    asked = {a for call in aws["simulated"] for a in call["ActionNames"]}
    assert set(iam_role_resolver._get_smoke_test_actions("training")) <= asked
    assert all(call["PolicySourceArn"] == ROLE_ARN for call in aws["simulated"])


@pytest.mark.parametrize("missing", iam_role_resolver._get_smoke_test_actions("training"))
def test_a_policy_missing_an_action_fails_in_one_line_naming_it(
    aws, missing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = documented_policy()
    for statement in policy["Statement"]:
        statement["Action"] = [a for a in _listed(statement["Action"]) if a != missing]
    policy["Statement"] = [s for s in policy["Statement"] if s["Action"]]
    aws["session"].client("iam").put_role_policy(
        RoleName=ROLE_NAME, PolicyName="dialogsum-qlora", PolicyDocument=json.dumps(policy)
    )
    data = tmp_path / "dialogues.jsonl"
    data.write_text(json.dumps({"id": "1", "dialogue": "#Person1#: hi", "summary": "hi"}) + "\n")

    assert sm_cli.main(_launch("--config", "test", f"data.dataset={data}")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"--role {ROLE_ARN}: IAM role '{ROLE_ARN}' cannot be used" in line
    assert f"Missing permissions: {missing};" in line
    assert "add them to the role's policy" in line and "pass --role" not in line
    assert aws["requests"] == [] and _objects(aws["session"]) == []  # refused before any upload


def test_without_a_role_the_sdks_reason_and_the_option_to_pass(aws, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", "test", "--instance", "ml.g5.xlarge", "--region", REGION, "--output", f"s3://{BUCKET}/exp"]
    assert sm_cli.main(argv) == 1  # moto's caller is an IAM user: no role behind it
    line = _one_error_line(capsys.readouterr().err)
    assert "No IAM role could be resolved from your caller identity" in line
    assert line.endswith("pass --role NAME_OR_ARN (docs/sagemaker.md, step 1, creates one)")
    assert "Required permissions" not in line


def test_a_role_sagemaker_may_not_assume_is_refused(aws, capsys: pytest.CaptureFixture[str]) -> None:
    untrusting = {**TRUST, "Statement": [{**TRUST["Statement"][0], "Principal": {"Service": "ec2.amazonaws.com"}}]}
    aws["session"].client("iam").update_assume_role_policy(RoleName=ROLE_NAME, PolicyDocument=json.dumps(untrusting))
    assert sm_cli.main(_launch("--config", "test")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "does not allow 'sagemaker.amazonaws.com' to assume it" in line and "trust policy" in line


# ------------------------------------------------------------------------------------------------------------
# The dry run is the request ModelTrainer sends


def _secret(session: boto3.Session) -> str:
    return session.client("secretsmanager").create_secret(Name="team/hf", SecretString="hf_" + "x" * 30)["ARN"]


@pytest.mark.parametrize(
    ("image", "spot", "local_data"),
    [("dlc", True, True), ("dlc", False, False), (IMAGE, True, True), (IMAGE, False, False), (IMAGE, False, True)],
)
def test_the_dry_run_is_the_request_sent(
    aws, image: str, spot: bool, local_data: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arn = _secret(aws["session"])
    extra = ["--tags", "team=nlp", "--config", "test", "--image", image, "--hf-token-secret", "team/hf", "lora.r=4"]
    if spot:
        extra.append("--spot")
    if local_data:
        data = tmp_path / "dialogues.jsonl"
        data.write_text(json.dumps({"id": "1", "dialogue": "#Person1#: hi", "summary": "hi"}) + "\n")
        extra.append(f"data.dataset={data}")

    assert sm_cli.main(_launch(*extra, "--dry-run")) == 0
    shown = capsys.readouterr().out
    assert aws["requests"] == []
    assert sm_cli.main(_launch(*extra)) == 0, capsys.readouterr().err
    (sent,) = aws["requests"]

    # The whole request, up to what only AWS knows: the job's timestamp, the account and the secret's suffix.
    filled = {
        service_model.STAMP_PLACEHOLDER: sent["TrainingJobName"].rsplit("-", 1)[1],
        service_model.ACCOUNT_PLACEHOLDER: ACCOUNT,
        checks.SECRET_SUFFIX_PLACEHOLDER: arn.rsplit("-", 1)[1],
    }
    assert service_model.with_placeholders_filled(json.loads(shown), filled) == sent
    assert sent["Environment"] == {req.SECRET_ENV: arn}  # the ARN, so the job reads it in the secret's region
    assert ("InputDataConfig" in sent) == (local_data or image == "dlc")  # never an empty list
    # The DLC runs the config.yaml of its code channel; our image takes the config as dotted hyperparameters.
    assert sent["HyperParameters"] == {} if image == "dlc" else sent["HyperParameters"]["lora.r"] == "4"
    assert sent["EnableManagedSpotTraining"] is spot
    assert checks.request_problems(sent) == []


# ------------------------------------------------------------------------------------------------------------
# The service model's limits, in the dry run and before any upload


def _dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = sm_cli.main(["--instance", "ml.g5.xlarge", "--region", REGION, "--dry-run", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_config_file_name_makes_a_valid_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "my(run).yaml"
    config.write_text((REPO / "job" / "presets" / "test.yaml").read_text())
    rc, out, err = _dry_run(capsys, "--config", str(config))
    assert rc == 0, err
    tags = {t["Key"]: t["Value"] for t in json.loads(out)["Tags"]}
    assert tags["config"] == "my-run-.yaml"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--tags", "team=a,b"], "CreateTrainingJob Tags[4].Value: \"a,b\" holds ','"),
        (["--tags", "a(b)=c"], "CreateTrainingJob Tags[4].Key: \"a(b)\" holds '(' ')'"),
        (["--image", IMAGE, "data.system_prompt=" + "x" * 2501],
         "CreateTrainingJob HyperParameters[\"data.system_prompt\"]: 2501 characters, at most 2500 allowed"),
        (["--name", "x" * 60 + "_"], None),  # the prefix is cut to a valid name: no problem
    ],
)  # fmt: skip
def test_out_of_model_values_fail_in_the_dry_run(
    argv: list[str], expected: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _dry_run(capsys, "--config", "test", *argv)
    if expected is None:
        assert rc == 0, err
        return
    assert rc == 2 and out == ""
    line = _one_error_line(err)
    assert line.startswith(f"error: {expected}")
    assert ("fix --tags" in line) if "Tags" in expected else ("shorten or change that one" in line)


def test_a_mistyped_region_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc = sm_cli.main(["--config", "test", "--instance", "ml.g5.xlarge", "--region", "us-est-1", "--dry-run"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert line.startswith("error: --region us-est-1: not a region SageMaker runs in (regions look like us-east-1")
    assert "us-east-1 or" in line or "or us-east-1" in line


def test_refused_before_any_upload_or_paid_call(aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "dialogues.jsonl"
    data.write_text(json.dumps({"id": "1", "dialogue": "#Person1#: hi", "summary": "hi"}) + "\n")
    argv = _launch("--config", "test", "--tags", "cost=a,b", "--hf-token-secret", "team/new", "--create-secret",
                   f"data.dataset={data}")  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", "hf_" + "y" * 30)
        assert sm_cli.main(argv) == 2
    assert "Tags[4].Value" in _one_error_line(capsys.readouterr().err)
    assert _objects(aws["session"]) == [] and aws["requests"] == []
    assert aws["session"].client("secretsmanager").list_secrets()["SecretList"] == []  # no secret stored


def test_the_validator_walks_every_constraint() -> None:
    request = {
        "TrainingJobName": "ok-name",
        "AlgorithmSpecification": {"TrainingInputMode": "Fil", "TrainingImage": "img"},
        "RoleArn": f"arn:aws:iam::{service_model.ACCOUNT_PLACEHOLDER}:role/R",
        "OutputDataConfig": {"S3OutputPath": "s3://b/p"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": True, "VolumeSizeInGB": 100},
        "StoppingCondition": {"MaxRuntimeInSeconds": 0},
        "InputDataConfig": [],
        "Extra": 1,
    }
    found = service_model.problems("sagemaker", "CreateTrainingJob", request)
    assert found == [
        'CreateTrainingJob AlgorithmSpecification.TrainingInputMode: "Fil" is not one of Pipe, File, FastFile',
        "CreateTrainingJob ResourceConfig.InstanceCount: true is not of type integer",
        "CreateTrainingJob StoppingCondition.MaxRuntimeInSeconds: 0 is below the minimum 1",
        "CreateTrainingJob InputDataConfig: 0 items, at least 1 needed",
        "CreateTrainingJob Extra: CreateTrainingJobRequest has no such field",
    ]
    # Any operation of any service: a CreateModel request without its required field.
    assert service_model.problems("sagemaker", "CreateModel", {"ModelName": "m"}) == []
    assert service_model.problems("sagemaker", "CreateTransformJob", {"TransformJobName": "t"})[0].endswith(
        "ModelName: required, missing"
    )


# ------------------------------------------------------------------------------------------------------------
# --volume-size on NVMe instances


def test_volume_size_on_an_nvme_instance_warns(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _dry_run(capsys, "--config", "test", "--volume-size", "200")
    assert rc == 0 and json.loads(out)["ResourceConfig"]["VolumeSizeInGB"] == 200
    assert "warning: --volume-size 200: ignored on ml.g5.xlarge, whose NVMe instance storage" in err
    rc, out, err = _dry_run(capsys, "--config", "test")
    assert rc == 0 and json.loads(out)["ResourceConfig"]["VolumeSizeInGB"] == checks.DEFAULT_VOLUME_GB
    assert "--volume-size" not in err


def test_the_request_botocore_sends_is_checked_once_more() -> None:
    """The guard on provide-client-params.sagemaker.CreateTrainingJob, for what ModelTrainer itself adds."""
    request = {
        "TrainingJobName": "dialogsum-x-20261203120000",
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
        "RoleArn": ROLE_ARN,
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/exp/jobs"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 100},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }
    sm_cli._check_request_handler(request)
    with pytest.raises(LaunchError, match=r"Tags\[0\]\.Value: \"a,b\" holds ','.*fix --tags"):
        sm_cli._check_request_handler({**request, "Tags": [{"Key": "k", "Value": "a,b"}]})
