"""`python -m launch sagemaker deploy|invoke|endpoints|delete|transform` under moto, in-process: a finished run
(the shared `trained_run`) uploaded to moto S3, our image in moto ECR, the token's secret in moto Secrets Manager.
Every request is captured as botocore sends it, checked against botocore's service model and searched for the
planted token.

Where moto has no stand-in for the serving container, the container's side is played at the outermost edge, and
each test says so: InvokeEndpoint answers come from moto's own sagemaker-runtime results queue (moto returns what
is queued, it runs no model), filled with the serving contract's JSON built from the run's own predictions.jsonl; a
ModelError answer and the endpoint's status changes come from botocore's Stubber (moto's endpoints are InService at
once and its runtime never fails); a Batch Transform job's output is written to moto S3 when the job is created
(moto marks the job Completed and writes nothing). The server itself is `python -m job serve`, tested on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from moto.sagemakerruntime.models import sagemakerruntime_backends

from launch import service_model
from launch.errors import LaunchError
from launch.sagemaker import cli as sm_cli
from launch.sagemaker import endpoint as ep
from launch.sagemaker import serving, serving_cli
from launch.sagemaker import transform as tf

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_PlantedServingTokenNeverSent77"  # PLANTED: a fake token the tests look for
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
BUCKET = "serving-tests"
RUN_URI = f"s3://{BUCKET}/exp/runs/shared/"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/SageMakerTraining"
SECRET_ID = "dialogsum-qlora/hf-token"
INSTANCE = "ml.g4dn.xlarge"  # moto 5.2's endpoint configs refuse the g5 family, which botocore's model has
OPERATIONS = ["CreateModel", "CreateEndpointConfig", "CreateEndpoint", "CreateTransformJob", "DeleteModel"]
"""Captured as botocore sends them; the transform job's and the endpoint's creation also run the test's hooks."""


def _upload(s3: Any, folder: Path, uri: str) -> None:
    bucket, prefix = uri.removeprefix("s3://").split("/", 1)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}{path.relative_to(folder).as_posix()}")


def _predictions(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]


def contract_answer(rows: list[dict[str, Any]], ids: list[str] | None = None, model: str = "finetuned") -> str:
    """The serving contract's JSON answer for `rows` of predictions.jsonl: what `job serve` answers for them."""
    summaries = [
        {"id": (ids or [r["id"] for r in rows])[i], "summary": r[model], "prompt_tokens": 90, "new_tokens": 20}
        for i, r in enumerate(rows)
    ]
    return json.dumps({"summaries": summaries, "model": model, "dtype": "float32", "run": "shared", "seconds": 0.1})


def queue_answers(*bodies: str) -> None:
    """moto's sagemaker-runtime answers the next InvokeEndpoint calls with these bodies, in order."""
    backend = sagemakerruntime_backends[ACCOUNT][REGION]
    backend.results_queue.extend((body, ep.CONTENT_TYPE, ep.VARIANT, "") for body in bodies)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, trained_run):
    """moto with the run folder in S3, our image in ECR and the token's secret; every serving request captured."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(serving_cli, "POLL_S", 0.0)
    captured: dict[str, Any] = {"requests": [], "after": []}

    def capture(params: dict[str, Any], model: Any, **_: Any) -> None:
        captured["requests"].append((model.name, json.loads(json.dumps(params, default=_text))))

    def after(model: Any, **_: Any) -> None:
        params = next(p for op, p in reversed(captured["requests"]) if op == model.name)
        for hook in captured["after"]:
            hook(model.name, params)

    handlers = [(f"provide-client-params.sagemaker.{op}", capture) for op in OPERATIONS]
    handlers += [
        ("provide-client-params.sagemaker-runtime.InvokeEndpoint", capture),
        ("after-call.sagemaker.CreateTransformJob", after),
        ("after-call.sagemaker.CreateEndpoint", after),
    ]
    monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [*botocore.handlers.BUILTIN_HANDLERS, *handlers])
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        s3 = session.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        _upload(s3, trained_run.dir, RUN_URI)
        ecr = session.client("ecr")
        ecr.create_repository(repositoryName="dialogsum-qlora")
        ecr.put_image(
            repositoryName="dialogsum-qlora",
            imageManifest=json.dumps(
                {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "layers": []}
            ),
            imageTag=serving.default_image(ACCOUNT, REGION).rsplit(":", 1)[1],
        )
        arn = session.client("secretsmanager").create_secret(Name=SECRET_ID, SecretString=TOKEN)["ARN"]
        captured.update(session=session, secret_arn=arn, run=trained_run.dir)
        yield captured


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _sent(aws: dict[str, Any], operation: str) -> list[dict[str, Any]]:
    return [params for op, params in aws["requests"] if op == operation]


def _no_secret_anywhere(aws: dict[str, Any], *texts: str) -> None:
    everything = json.dumps(aws["requests"]) + "".join(texts)
    assert TOKEN not in everything
    for op, params in aws["requests"]:
        if op == "InvokeEndpoint":  # the Body is a blob, checked for its size alone
            assert len(params["Body"].encode()) <= ep.MAX_BODY
            assert service_model.problems("sagemaker-runtime", op, {**params, "Body": ""}) == [], op
        else:
            assert service_model.problems("sagemaker", op, params) == [], op


DEPLOY = ["deploy", RUN_URI, "--instance", INSTANCE, "--role", ROLE_ARN, "--hf-token-secret", SECRET_ID]


def test_deploy_sends_what_the_dry_run_showed_and_checks_the_endpoint(aws, capsys) -> None:
    """The dry run's three requests, placeholders filled with AWS's answers, are exactly what deploy sends; the run
    folder is the uncompressed model data; the token travels as its secret's ARN only; once InService, five test
    dialogues go through the endpoint and are scored beside the run's figure."""
    assert sm_cli.main([*DEPLOY, "--region", REGION, "--dry-run"]) == 0
    dry = capsys.readouterr()
    assert "dry run: read the run folder, created nothing" in dry.err
    assert "cost: $0.736/h for 1 x ml.g4dn.xlarge while the endpoint exists" in dry.err
    assert "an endpoint bills every hour" in dry.err and "python -m launch sagemaker delete shared" in dry.err
    assert aws["requests"] == []  # nothing created
    shown = dry.out.replace(service_model.ACCOUNT_PLACEHOLDER, ACCOUNT)
    shown = shown.replace(f"{SECRET_ID}-<SUFFIX>", aws["secret_arn"].rsplit(":", 1)[1])

    rows = _predictions(aws["run"])[: ep.CHECK_DIALOGUES]
    queue_answers(contract_answer(rows))
    assert sm_cli.main([*DEPLOY, "--region", REGION]) == 0
    out, err = capsys.readouterr()
    sent = {op: params for op, params in aws["requests"] if op != "InvokeEndpoint"}
    assert sent == json.loads(shown)

    container = sent["CreateModel"]["PrimaryContainer"]
    assert container["ModelDataSource"] == {
        "S3DataSource": {"S3Uri": RUN_URI, "S3DataType": "S3Prefix", "CompressionType": "None"}
    }
    assert container["Image"] == serving.default_image(ACCOUNT, REGION)
    assert container["Environment"] == {"HF_TOKEN_SECRET_ID": aws["secret_arn"]}
    variant = sent["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 60  # 3 MB: the floor
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == serving.STARTUP_S  # no Hub download
    (invoked,) = _sent(aws, "InvokeEndpoint")
    body = json.loads(invoked["Body"])
    assert body == {"dialogues": [r["dialogue"] for r in rows], "ids": [r["id"] for r in rows]}
    assert invoked["ContentType"] == invoked["Accept"] == "application/json"
    _no_secret_anywhere(aws, out, err)

    assert "endpoint shared: InService" in out
    lines = out.splitlines()
    served = next(line for line in lines if line.startswith("endpoint (5 test dialogues)"))
    same = next(line for line in lines if line.startswith("run, same dialogues"))
    assert served.split()[4:] == same.split()[3:]  # the run's own summaries score the same, with the same scorer
    assert "run, 6 dialogues (metrics.json)" in out
    assert "same summary as the run's predictions.jsonl: 5 of 5" in out


def test_endpoints_lists_the_hourly_cost_and_delete_removes_all_three(aws, capsys) -> None:
    assert sm_cli.main([*DEPLOY, "--region", REGION, "--check", "0", "--name", "tiny-1"]) == 0
    capsys.readouterr()
    assert sm_cli.main(["endpoints", "--region", REGION]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("tiny-1"))
    assert row.split()[:7] == ["tiny-1", "endpoint", "InService", "1", "x", INSTANCE, "$0.736"]
    assert "total: $0.736/h" in out and "as of" in out

    again = sm_cli.main([*DEPLOY, "--region", REGION, "--check", "0", "--name", "tiny-1"])
    assert (
        again == 1
        and "tiny-1: the endpoint, endpoint config and model of that name exist already; delete them first"
        in capsys.readouterr().err
    )

    assert sm_cli.main(["delete", "tiny-1", "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert (
        "deleted endpoint tiny-1" in out and "deleted endpoint config tiny-1" in out and "deleted model tiny-1" in out
    )
    sm = aws["session"].client("sagemaker")
    assert ep.taken(sm, "tiny-1") == []
    assert sm_cli.main(["delete", "tiny-1", "--region", REGION]) == 1
    assert "no endpoint, endpoint config or model named 'tiny-1'" in capsys.readouterr().err
    assert sm_cli.main(["endpoints", "--region", REGION]) == 0
    assert "no endpoints and no transform jobs running in this region" in capsys.readouterr().out


def test_invoke_sends_the_contracts_json_in_batches_and_writes_one_line_each(aws, tmp_path: Path, capsys) -> None:
    """Seven dialogues, three per request: three InvokeEndpoint calls, answers in order with their ids."""
    rows = [dict(r, id=f"d{i}") for i, r in enumerate((_predictions(aws["run"]) * 2)[:7])]
    source = tmp_path / "dialogues.jsonl"
    source.write_text("".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows))
    queue_answers(*(contract_answer(rows[i : i + 3], model="base") for i in range(0, 7, 3)))
    target = tmp_path / "out.jsonl"
    argv = ["invoke", "tiny", "--input", str(source), "--output", str(target), "--batch", "3", "--model", "base"]
    assert sm_cli.main([*argv, "--max-new-tokens", "40", "--region", REGION]) == 0
    bodies = [json.loads(p["Body"]) for p in _sent(aws, "InvokeEndpoint")]
    assert [b["ids"] for b in bodies] == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"]]
    assert all(b["model"] == "base" and b["max_new_tokens"] == 40 for b in bodies)
    written = [json.loads(line) for line in target.read_text().splitlines()]
    assert [w["id"] for w in written] == [r["id"] for r in rows]
    assert [w["summary"] for w in written] == [r["base"] for r in rows]
    assert {w["model"] for w in written} == {"base"}
    _no_secret_anywhere(aws, capsys.readouterr().out)


def test_invoke_bad_inputs_are_one_line_each(aws, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "none.jsonl"
    assert sm_cli.main(["invoke", "tiny", "--input", str(missing), "--region", REGION]) == 2
    assert capsys.readouterr().err.strip() == f"error: --input {missing}: no such file"
    empty = tmp_path / "x.jsonl"
    empty.write_text('{"text": "hello"}\n')
    assert sm_cli.main(["invoke", "tiny", "--input", str(empty), "--region", REGION]) == 2
    assert "line 1: no 'dialogue' text" in capsys.readouterr().err
    assert _sent(aws, "InvokeEndpoint") == []


def test_a_request_over_invoke_endpoints_body_limit_is_refused_before_it_is_sent() -> None:
    rows = [{"id": str(i), "dialogue": "#Person1#: " + "word " * 300_000} for i in range(5)]
    with pytest.raises(LaunchError) as raised:
        ep.invoke(None, "tiny", rows)
    assert raised.value.exit_code == 2
    assert raised.value.lines == [
        "dialogues 0 to 4 make a request of 7.2 MiB, more than InvokeEndpoint's 6 MiB; lower --batch"
    ]
    with pytest.raises(LaunchError, match="EndpointName.*fix ENDPOINT"):
        ep.invoke(None, "bad_name", [{"id": "1", "dialogue": "#Person1#: Hi."}])


def test_a_4xx_from_the_container_is_one_line() -> None:
    """moto's runtime never fails: the ModelError SageMaker returns for a container's 4xx comes from Stubber."""
    runtime = boto3.client("sagemaker-runtime", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(runtime) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            service_message='Received client error (400) from primary with message "..."',
            http_status_code=424,
            modeled_fields={
                "OriginalStatusCode": 400,
                "OriginalMessage": '{"error": "dialogue 1 is empty: give text"}',
            },
        )
        with pytest.raises(LaunchError) as raised:
            ep.invoke(runtime, "tiny", [{"id": "1", "dialogue": ""}])
    assert raised.value.lines == ["endpoint tiny answered 400: dialogue 1 is empty: give text"]


def test_wait_prints_each_status_until_in_service() -> None:
    """moto's endpoints are InService at once: the Creating phase comes from Stubber."""
    sm = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    base = {"EndpointName": "e", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e", "EndpointConfigName": "e"}
    stamps = {"CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z"}
    seen: list[str] = []
    with Stubber(sm) as stub:
        for status in ("Creating", "Creating", "Failed"):
            extra = {"FailureReason": "ping timed out"} if status == "Failed" else {}
            stub.add_response("describe_endpoint", {**base, **stamps, "EndpointStatus": status, **extra})
        done = ep.wait(sm, "e", out=seen.append, poll_s=0)
    assert seen == ["[Creating] e", "[Failed] e"] and done["FailureReason"] == "ping timed out"


def test_transform_runs_the_same_container_over_json_lines_and_fetches_line_for_line(
    aws, tmp_path: Path, capsys
) -> None:
    """The container's side (one output line per input line, in order) is written to moto S3 when the job is
    created: moto completes the job at once and runs nothing."""
    rows = _predictions(aws["run"])
    s3 = aws["session"].client("s3")
    s3.put_object(
        Bucket=BUCKET,
        Key="in/a.jsonl",
        Body="".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows),
    )
    s3.put_object(Bucket=BUCKET, Key="in/b.jsonl", Body=json.dumps({"id": "x", "dialogue": rows[0]["dialogue"]}) + "\n")

    def container(operation: str, params: dict[str, Any]) -> None:
        if operation != "CreateTransformJob":
            return
        out = params["TransformOutput"]["S3OutputPath"].removeprefix(f"s3://{BUCKET}/")
        for key in ("in/a.jsonl", "in/b.jsonl"):
            lines = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()
            answer = "".join(
                json.dumps(
                    {
                        "id": json.loads(x)["id"],
                        "summary": "s",
                        "prompt_tokens": 1,
                        "new_tokens": 1,
                        "model": "finetuned",
                    }
                )
                + "\n"
                for x in lines
            )
            s3.put_object(Bucket=BUCKET, Key=f"{out}{key.removeprefix('in/')}.out", Body=answer)

    aws["after"].append(container)
    argv = ["transform", RUN_URI, "--input", f"s3://{BUCKET}/in/", "--instance", INSTANCE, "--role", ROLE_ARN]
    argv += ["--region", REGION, "--name", "batch"]
    assert sm_cli.main([*argv, "--dry-run"]) == 0
    shown = capsys.readouterr().out.replace(service_model.ACCOUNT_PLACEHOLDER, ACCOUNT)
    assert sm_cli.main([*argv, "--to", str(tmp_path / "got")]) == 0
    out = capsys.readouterr().out
    (job,) = _sent(aws, "CreateTransformJob")
    stamp = job["TransformJobName"].removeprefix("batch-")
    sent = {op: p for op, p in aws["requests"] if op in ("CreateModel", "CreateTransformJob")}
    assert sent == json.loads(shown.replace(service_model.STAMP_PLACEHOLDER, stamp))  # the dry run is what is sent
    assert job["TransformInput"]["SplitType"] == "Line" and job["BatchStrategy"] == "MultiRecord"
    assert job["TransformInput"]["ContentType"] == job["TransformOutput"]["Accept"] == "application/jsonlines"
    assert job["TransformOutput"]["AssembleWith"] == "Line"
    assert job["ModelClientConfig"]["InvocationsTimeoutInSeconds"] == 3600 and 1 <= job["MaxPayloadInMB"] <= 6
    assert job["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/exp/transforms/{job['TransformJobName']}/"
    (model,) = _sent(aws, "CreateModel")
    assert model["ModelName"] == job["ModelName"] == job["TransformJobName"]
    assert model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] == RUN_URI
    assert _sent(aws, "DeleteModel") == [{"ModelName": job["ModelName"]}]  # nothing left behind
    folder = Path(out.strip().splitlines()[-1])
    assert len((folder / "a.jsonl.out").read_text().splitlines()) == len(rows)
    _no_secret_anywhere(aws, out)


def test_transform_output_missing_a_line_is_refused(aws, tmp_path: Path, capsys) -> None:
    s3 = aws["session"].client("s3")
    s3.put_object(Bucket=BUCKET, Key="in/a.jsonl", Body='{"dialogue": "a"}\n{"dialogue": "b"}\n')
    aws["after"].append(
        lambda op, params: s3.put_object(
            Bucket=BUCKET,
            Key=params["TransformOutput"]["S3OutputPath"].removeprefix(f"s3://{BUCKET}/") + "a.jsonl.out",
            Body='{"summary": "a"}\n',
        )
    )
    argv = ["transform", RUN_URI, "--input", f"s3://{BUCKET}/in/a.jsonl", "--instance", INSTANCE]
    assert sm_cli.main([*argv, "--role", ROLE_ARN, "--region", REGION, "--to", str(tmp_path)]) == 1
    assert "a.jsonl: 1 output lines for 2 input lines" in capsys.readouterr().err


def test_bad_deploys_are_one_line_each_before_anything_is_created(aws, capsys) -> None:
    argv = ["deploy", RUN_URI, "--instance", "ml.m5.xlarge", "--name=-bad-", "--image", "docker.io/me/x:1"]
    assert sm_cli.main([*argv, "--region", REGION]) == 2
    err = capsys.readouterr().err
    assert "ml.m5.xlarge is not a GPU instance type" in err and "SageMaker pulls images from ECR" in err
    assert "--name '-bad-': SageMaker names hold letters, digits and '-'" in err
    assert sm_cli.main(["deploy", f"s3://{BUCKET}/exp/runs/none/", "--instance", INSTANCE, "--region", REGION]) == 1
    assert "holds no complete run (no manifest.json)" in capsys.readouterr().err
    assert sm_cli.main(["deploy", "runs/local", "--instance", INSTANCE, "--region", REGION]) == 2
    assert "SageMaker serves a run folder from S3" in capsys.readouterr().err
    other = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/dialogsum-qlora:nope"
    assert sm_cli.main([*DEPLOY, "--region", REGION, "--image", other]) == 1
    assert "not in ECR; push our image first: python -m launch image push" in capsys.readouterr().err
    assert aws["requests"] == []


def test_a_request_the_service_model_refuses_names_the_option_to_fix() -> None:
    bad = {"CreateEndpoint": {"EndpointName": "a b", "EndpointConfigName": "c"}}
    with pytest.raises(LaunchError) as raised:
        serving.checked(bad)
    assert raised.value.exit_code == 2
    assert raised.value.lines == [
        'CreateEndpoint EndpointName: "a b" does not match [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}; fix --name'
    ]


def test_a_token_in_a_request_is_never_sent(aws) -> None:
    with pytest.raises(LaunchError, match="HF_TOKEN"):
        serving.checked(
            {
                "CreateModel": {
                    "ModelName": "m",
                    "ExecutionRoleArn": ROLE_ARN,
                    "PrimaryContainer": {"Image": "i", "Environment": {"HF_TOKEN": TOKEN}},
                }
            }
        )
    sm = aws["session"].client("sagemaker")
    serving.guard(aws["session"], ["CreateModel"])
    guarded = aws["session"].client("sagemaker")
    with pytest.raises(LaunchError, match="HF_TOKEN"):
        guarded.create_model(
            ModelName="m", ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"Image": "i", "Environment": {"X": TOKEN}}
        )
    assert ep.taken(sm, "m") == []


def test_timeouts_grow_with_the_model_and_stay_in_range() -> None:
    from job import config

    def run(preset: str, size: int, files: list[str]) -> serving.Run:
        manifest = {"files": [{"path": f, "size": size // len(files)} for f in files]}
        return serving.Run(uri="s3://b/r/", name="r", manifest=manifest, cfg=config.resolve(preset))

    llama = serving.timeouts(run(str(REPO / "job/presets/llama-3.2-3b-qlora.yaml"), 100_000_000, ["adapter/a"]))
    tiny = serving.timeouts(run("test", 3_000_000, ["adapter/a", "base_model/b"]))
    # Llama 3.2 3B: ~6.4 GB of bf16 weights from the Hub, read at start; the tiny run holds its base.
    assert (
        llama["ContainerStartupHealthCheckTimeoutInSeconds"] > 600 > tiny["ContainerStartupHealthCheckTimeoutInSeconds"]
    )
    merged = serving.timeouts(run("test", 40_000_000_000, ["adapter/a", "merged/m"]))
    assert merged == {"ModelDataDownloadTimeoutInSeconds": 1260, "ContainerStartupHealthCheckTimeoutInSeconds": 780}
    huge = serving.timeouts(run("test", 10**12, ["merged/m"]))
    assert set(huge.values()) == {3600}


def test_deploy_under_moto_server_without_torch(tmp_path: Path, trained_run) -> None:
    """The whole deploy, the check's scoring included, in a process where torch cannot be imported: moto's server
    plays AWS, its sagemaker-runtime answers from its results queue."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_TOKEN"))}
    env.update(
        AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(tmp_path / "none"), SAGEMAKER_VALIDATE_ROLE="false", PYTHONPATH=str(REPO), HF_TOKEN=TOKEN,
    )  # fmt: skip
    try:
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
        s3 = session.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket=BUCKET)
        _upload(s3, trained_run.dir, RUN_URI)
        rows = _predictions(trained_run.dir)[:2]
        results = {"results": [{"Body": contract_answer(rows), "ContentType": ep.CONTENT_TYPE}]}
        request = urllib.request.Request(
            f"{url}/moto-api/static/sagemaker/endpoint-results", data=json.dumps(results).encode(), method="POST"
        )
        urllib.request.urlopen(request)
        image = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/dialogsum-qlora:1"  # another region's: not looked up
        argv = ["sagemaker", "deploy", RUN_URI, "--instance", INSTANCE, "--role", ROLE_ARN, "--image", image]
        no_torch = (  # an import of these fails (scipy, which nltk imports, reads sys.modules['torch'] if set)
            "import importlib.abc, sys\n"
            "class Blocked(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate'):\n"
            "            raise ImportError(f'{name} is blocked')\n"
            "sys.meta_path.insert(0, Blocked())\n"
            "from launch.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "assert not [m for m in ('torch', 'transformers', 'peft') if sys.modules.get(m) is not None]\n"
            "sys.exit(rc)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", no_torch, *argv, "--check", "2", "--region", REGION],
            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "endpoint shared: InService" in done.stdout
    assert "same summary as the run's predictions.jsonl: 2 of 2" in done.stdout
    assert TOKEN not in done.stdout + done.stderr


def test_mini_batches_are_sized_to_answer_well_inside_the_invocation_timeout() -> None:
    """MaxPayloadInMB: Batch Transform's default 6 MB where the catalog's generation figures say a mini-batch takes
    at most half of InvocationsTimeoutInSeconds, less on a slower GPU."""
    from job import config

    llama = serving.Run(
        "s3://b/r/", "r", {"files": []}, config.resolve(str(REPO / "job/presets/llama-3.2-3b-qlora.yaml"))
    )
    assert tf.max_payload(llama, "ml.g5.xlarge") == tf.MAX_PAYLOAD_MB
    slow = tf.max_payload(llama, "ml.g4dn.xlarge")  # the T4
    assert slow < tf.MAX_PAYLOAD_MB
    assert tf.minibatch_seconds(llama, "ml.g4dn.xlarge", slow) <= tf.INVOCATION_TIMEOUT_S / 2
    assert tf.minibatch_seconds(llama, "ml.g4dn.xlarge", slow + 1) > tf.INVOCATION_TIMEOUT_S / 2


def test_the_sdks_serving_role_check_stays_on(aws, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The SDK validates the execution role for serving (`resolve_and_validate_role(role_type="serving")`), IAM's
    policy simulator answered from the role's policies as moto stores them (tests/test_sagemaker_checks.py): the
    training role docs/sagemaker.md documents serves too; one without ECR access is refused in one line."""
    from tests.test_sagemaker_checks import TRUST, _simulator, documented_policy

    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE")
    monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [*botocore.handlers.BUILTIN_HANDLERS, *_simulator([])])
    iam = aws["session"].client("iam")
    for name, policy in (("Documented", documented_policy()), ("NoEcr", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]})):  # fmt: skip
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))
        iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    argv = ["deploy", RUN_URI, "--instance", INSTANCE, "--region", REGION, "--check", "0"]
    assert sm_cli.main([*argv, "--role", "NoEcr", "--name", "refused"]) == 1
    err = capsys.readouterr().err
    assert "error: --role NoEcr: IAM role" in err and "'serving' workloads" in err
    assert "Missing permissions: ecr:GetAuthorizationToken; add them to the role's policy" in err
    assert _sent(aws, "CreateModel") == []
    assert sm_cli.main([*argv, "--role", "Documented", "--name", "served"]) == 0
    (model,) = _sent(aws, "CreateModel")
    assert model["ExecutionRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/Documented"


def documented_cases() -> list[tuple[list[str], int, list[str]]]:
    """(argv, exit code, error lines) of each command in docs/bad-inputs.md's serving section."""
    text = (REPO / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    block = text.split("## Serving on SageMaker", 1)[1].split("```", 2)[1]
    cases: list[tuple[list[str], int, list[str]]] = []
    for line in block.strip().splitlines():
        if line.startswith("$ python -m launch sagemaker "):
            command, code = line.removeprefix("$ python -m launch sagemaker ").rsplit("   # exit ", 1)
            cases.append((command.split(), int(code), []))
        else:
            cases[-1][2].append(line)
    return cases


def test_the_docs_list_every_serving_message_word_for_word(aws, tmp_path: Path, monkeypatch, capsys) -> None:
    """Each command of docs/bad-inputs.md's serving section, run as written: its exit code and exactly its lines."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "dialogues.jsonl").write_text('{"dialogue": "#Person1#: Hi."}\n')
    long = json.dumps({"dialogue": "#Person1#: " + "word " * 300_000})
    (tmp_path / "long.jsonl").write_text((long + "\n") * 5)
    aws["session"].client("s3").put_object(Bucket=BUCKET, Key="exp/runs/unfinished/config.yaml", Body=b"{}")
    aws["session"].client("sagemaker").create_model(
        ModelName="taken", ExecutionRoleArn=ROLE_ARN, PrimaryContainer={"Image": "x"}
    )
    _hub_run(aws, "hub")
    aws["requests"].clear()
    cases = documented_cases()
    assert len(cases) >= 14
    for argv, code, lines in cases:
        rc = sm_cli.main([*argv, "--region", REGION])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert (rc, err) == (code, lines), argv
    assert [op for op, _ in aws["requests"]] == []  # nothing created


def test_an_endpoint_that_fails_to_start_says_why_and_how_to_delete_it(aws, capsys) -> None:
    """moto's endpoints are InService at once: the failure is set on moto's own endpoint once it is created."""
    from moto.sagemaker.models import sagemaker_backends

    def fail(operation: str, params: dict[str, Any]) -> None:
        assert operation == "CreateEndpoint"
        endpoint = sagemaker_backends[ACCOUNT][REGION].endpoints[params["EndpointName"]]
        endpoint.endpoint_status, endpoint.failure_reason = "Failed", "The primary container did not pass the ping"

    aws["after"].append(fail)
    assert sm_cli.main([*DEPLOY, "--region", REGION, "--name", "broken"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: endpoint broken is Failed: The primary container did not pass the ping (its logs: CloudWatch "
        "/aws/sagemaker/Endpoints/broken); delete it: python -m launch sagemaker delete broken" in err
    )
    assert _sent(aws, "InvokeEndpoint") == []


def test_transform_jobs_in_progress_are_listed_with_their_hourly_cost() -> None:
    """moto completes transform jobs at once: one in progress comes from Stubber."""
    sm = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stamps = {"CreationTime": "2026-01-01T10:00:00Z"}
    job = {"TransformJobName": "batch-1", "TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/batch-1"}
    with Stubber(sm) as stub:
        stub.add_response(
            "list_transform_jobs",
            {"TransformJobSummaries": [{**job, **stamps, "TransformJobStatus": "InProgress"}]},
            {"StatusEquals": "InProgress"},
        )
        described = {
            **job,
            **stamps,
            "TransformJobStatus": "InProgress",
            "ModelName": "batch-1",
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}},
            "TransformResources": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 2},
        }
        stub.add_response("describe_transform_job", described, {"TransformJobName": "batch-1"})
        lines = ep.endpoints_table([], tf.running(sm))
    row = lines[1].split()
    assert row[:7] == ["batch-1", "transform", "InProgress", "2", "x", "ml.g5.xlarge", "$2.816"]
    assert lines[2] == "total: $2.816/h"


# ----------------------------------------------------------------------------------------------------------------
# Company accounts: the account options and a staged base model on deploy and transform

HUB_BASE = "meta-llama/Llama-3.2-3B-Instruct"
COMMIT = "a" * 40
STAGED_URI = f"s3://{BUCKET}/exp/models/{HUB_BASE}/{COMMIT}/"
STAGED_BYTES = 6_400_000_000
ACCOUNT_OPTIONS = ["--subnets", "subnet-0abc1234", "--security-groups", "sg-0abc1234", "--kms-key", "alias/serving"]


def _hub_run(aws: dict[str, Any], name: str, model_name: str = HUB_BASE) -> str:
    """The shared run as an adapter on a Hub base (or, with `channel:model`, on staged weights), uploaded under
    runs/NAME/: its config names that model, its manifest and folder hold no base_model/."""
    import yaml

    s3, run = aws["session"].client("s3"), aws["run"]
    uri = f"s3://{BUCKET}/exp/runs/{name}/"
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"] = model_name
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = HUB_BASE
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith("base_model/")]
    changed = {
        "config.yaml": yaml.safe_dump(cfg),
        "adapter/adapter_config.json": json.dumps(adapter),
        "manifest.json": json.dumps(manifest),
    }
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run).as_posix()
        if path.is_file() and not rel.startswith("base_model/"):
            body = changed[rel].encode() if rel in changed else path.read_bytes()
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}{rel}", Body=body)
    return uri


def _stage(aws: dict[str, Any]) -> None:
    """A completed `stage-model` of HUB_BASE as stage.py records it (its staged-model.json, written last)."""
    from launch.sagemaker import stage

    files = [stage.HubFile("model.safetensors", STAGED_BYTES, "e1"), stage.HubFile("config.json", 900, "c1")]
    key = f"{STAGED_URI.removeprefix(f's3://{BUCKET}/')}{stage.STAGED}"
    aws["session"].client("s3").put_object(Bucket=BUCKET, Key=key, Body=stage.manifest(HUB_BASE, COMMIT, files))


def test_deploy_and_transform_send_the_account_options(aws, capsys) -> None:
    """The VPC and network isolation on the model, the keys on the endpoint config and the transform job: each in
    the request botocore sends, checked against its service model. On NVMe instances (g4dn) the volume's key is
    left out, and the dry run says so."""
    argv = [*DEPLOY[:2], "--instance", "ml.m5.large", "--role", ROLE_ARN, "--region", REGION, "--check", "0"]
    assert sm_cli.main([*argv, *ACCOUNT_OPTIONS, "--network-isolation", "--name", "vpc"]) == 0
    capsys.readouterr()
    (model,) = _sent(aws, "CreateModel")
    assert model["VpcConfig"] == {"SecurityGroupIds": ["sg-0abc1234"], "Subnets": ["subnet-0abc1234"]}
    assert model["EnableNetworkIsolation"] is True
    assert model["PrimaryContainer"]["Environment"] == {"HF_HUB_OFFLINE": "1"}
    (config,) = _sent(aws, "CreateEndpointConfig")
    assert config["KmsKeyId"] == "alias/serving"  # ml.m5.large has an EBS volume
    _no_secret_anywhere(aws)

    assert sm_cli.main([*DEPLOY, "--region", REGION, "--dry-run", "--kms-key", "alias/serving"]) == 0
    dry = capsys.readouterr()
    assert "KmsKeyId" not in dry.out and "VpcConfig" not in dry.out and "EnableNetworkIsolation" not in dry.out
    assert (
        f"--kms-key: {INSTANCE} keeps /opt/ml on NVMe instance storage, which its hardware encrypts, so no "
        "VolumeKmsKeyId is sent"
    ) in dry.err

    aws["requests"].clear()
    transform = ["transform", RUN_URI, "--input", f"s3://{BUCKET}/in/", "--role", ROLE_ARN, "--region", REGION]
    for instance in ("ml.m5.large", INSTANCE):
        name = f"t-{instance.split('.')[1]}"
        assert sm_cli.main([*transform, "--instance", instance, *ACCOUNT_OPTIONS, "--no-wait", "--name", name]) == 0
    capsys.readouterr()
    ebs, nvme = _sent(aws, "CreateTransformJob")
    assert ebs["TransformOutput"]["KmsKeyId"] == nvme["TransformOutput"]["KmsKeyId"] == "alias/serving"
    assert ebs["TransformResources"]["VolumeKmsKeyId"] == "alias/serving"
    assert "VolumeKmsKeyId" not in nvme["TransformResources"]
    assert all(m["VpcConfig"]["Subnets"] == ["subnet-0abc1234"] for m in _sent(aws, "CreateModel"))
    _no_secret_anywhere(aws)
    assert sm_cli.main([*transform, "--instance", INSTANCE, "--kms-key", "alias/serving", "--dry-run"]) == 0
    assert f"--kms-key: encrypts the output; {INSTANCE} keeps /opt/ml on NVMe" in capsys.readouterr().err


def test_a_staged_base_is_model_data_beside_the_run_with_no_token(aws, capsys) -> None:
    """`--model-s3`: the staged base travels as AdditionalModelDataSources `base`, BASE_MODEL_DIR names its folder
    in the container (job/serve.py loads the base from there), no secret, and the timeouts count its bytes. A run
    trained on the staged weights (`channel:model`) is served the same way."""
    from job import runtime

    hub = _hub_run(aws, "hub")
    _stage(aws)
    argv = ["deploy", hub, "--instance", INSTANCE, "--role", ROLE_ARN, "--region", REGION, "--check", "0"]
    assert sm_cli.main([*argv, "--model-s3", STAGED_URI, "--network-isolation", "--name", "staged"]) == 0
    err = capsys.readouterr().err
    assert f"base {HUB_BASE} 6.40 GB staged at {STAGED_URI} as model data" in err
    assert "gated" not in err  # no token needed
    (model,) = _sent(aws, "CreateModel")
    container = model["PrimaryContainer"]
    assert container["AdditionalModelDataSources"] == [
        {
            "ChannelName": "base",
            "S3DataSource": {"S3Uri": STAGED_URI, "S3DataType": "S3Prefix", "CompressionType": "None"},
        }
    ]
    assert container["Environment"] == {
        runtime.BASE_MODEL_ENV: "/opt/ml/additional-model-data-sources/base",
        "HF_HUB_OFFLINE": "1",
    }
    assert container["ModelDataSource"]["S3DataSource"]["S3Uri"] == hub
    (variant,) = _sent(aws, "CreateEndpointConfig")[0]["ProductionVariants"]
    assert variant["ModelDataDownloadTimeoutInSeconds"] >= 60 + 3 * STAGED_BYTES / serving.S3_BYTES_PER_S
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] > serving.STARTUP_S
    _no_secret_anywhere(aws, err)

    channel = _hub_run(aws, "from-channel", model_name="channel:model")
    base = ["deploy", channel, "--instance", INSTANCE, "--region", REGION]
    assert sm_cli.main([*base, "--dry-run"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: the run's base model came staged (channel:model, {HUB_BASE}); pass --model-s3 with the URI "
        "`python -m launch sagemaker stage-model` printed for it, which the container reads as model data"
    )
    assert sm_cli.main([*base, "--dry-run", "--model-s3", STAGED_URI]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["CreateModel"]["PrimaryContainer"]["AdditionalModelDataSources"][0]["ChannelName"] == "base"


def test_refused_account_combinations_are_one_line_each_before_anything_is_created(aws, capsys) -> None:
    hub = _hub_run(aws, "hub")
    base = ["deploy", hub, "--instance", INSTANCE, "--region", REGION]
    cases = [
        (
            [*base, "--network-isolation", "--hf-token-secret", SECRET_ID],
            2,
            [
                f"error: --network-isolation: the container has no network to download {HUB_BASE} from the Hugging "
                "Face Hub; stage the weights in S3 once (`python -m launch sagemaker stage-model MODEL_ID --revision "
                "SHA`) and pass --model-s3 URI",
                "error: --network-isolation: the container has no network to read --hf-token-secret from Secrets "
                "Manager; drop it (a staged model needs none)",
            ],
        ),
        (
            [*base, "--model-s3", f"s3://{BUCKET}/exp/models/nothing/"],
            1,
            [
                f"error: --model-s3 s3://{BUCKET}/exp/models/nothing/: no staged-model.json there, so no complete "
                f"staged model; stage one with `python -m launch sagemaker stage-model {HUB_BASE} --revision SHA` "
                "and pass the URI it prints"
            ],
        ),
    ]
    for argv, code, lines in cases:
        assert sm_cli.main(argv) == code, argv
        assert capsys.readouterr().err.strip().splitlines() == lines
    assert aws["requests"] == []
