"""A real-time SageMaker endpoint for a finished run: the CreateModel, CreateEndpointConfig and CreateEndpoint
requests, waiting until it is InService, a check on a few of the run's test dialogues scored with the job's own
scorer beside the run's figure, InvokeEndpoint with the serving contract's JSON, what is running and what it costs
an hour, and deleting an endpoint with its config and model. Plain boto3 clients. Imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from job import tables
from launch import service_model
from launch.errors import BadInput, LaunchError
from launch.sagemaker import account, serving

VARIANT = "AllTraffic"
CONTENT_TYPE = "application/json"
OPERATIONS = ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
ENDPOINT_TERMINAL = ("InService", "Failed", "OutOfService")
ACTIVE = ("Creating", "Updating", "SystemUpdating", "RollingBack", "InService", "UpdateRollbackFailed", "Deleting")
"""Endpoint states with instances behind them, which bill."""
CHECK_DIALOGUES = 5
"""Test dialogues `deploy` sends through the new endpoint."""
BATCH = 8
MAX_BODY = 6 * 2**20
"""InvokeEndpoint's largest request body (the service model's Body max)."""
"""Dialogues per InvokeEndpoint request: a batch answers well inside InvokeEndpoint's 60 s."""
BILLS_WARNING = (
    "warning: an endpoint bills every hour its instances run, invoked or not, until it is deleted: "
    "python -m launch sagemaker delete {name} --region {region}"
)


def requests_for(
    name: str,
    run: serving.Run,
    image: str,
    role: str,
    secret: str | None,
    instance_type: str,
    count: int,
    acct: account.Account | None = None,
) -> dict[str, dict[str, Any]]:
    """The three requests `deploy` sends, by operation; the model, its config and the endpoint share one name. The
    account options: the VPC and isolation on the model, the volume's key on the config where it has an EBS one."""
    acct = acct or account.Account()
    config: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [], "Tags": serving.tags(run)}
    if key := account.volume_kms(acct, instance_type):
        config["KmsKeyId"] = key
    variant = {
        "VariantName": VARIANT,
        "ModelName": name,
        "InstanceType": instance_type,
        "InitialInstanceCount": count,
        **serving.timeouts(run),
    }
    config["ProductionVariants"].append(variant)
    return {
        "CreateModel": serving.model_request(name, run, image, role, secret, acct),
        "CreateEndpointConfig": config,
        "CreateEndpoint": {"EndpointName": name, "EndpointConfigName": name, "Tags": serving.tags(run)},
    }


def cost_lines(instance_type: str, count: int, name: str, region: str) -> list[str]:
    price = serving.hourly_price(instance_type)
    lines = []
    if price is not None:
        lines.append(f"cost: ${price * count:.3f}/h for {count} x {instance_type} while the endpoint exists")
        lines.append(f"  {serving.price_note()}")
    else:
        lines.append(f"cost: no price for {instance_type} in job/prices.json")
    lines.append(BILLS_WARNING.format(name=name, region=region))
    return lines


def taken(sm: Any, name: str) -> list[str]:
    """Which of the endpoint, its config and its model of this name already exist."""
    found = [
        ("endpoint", sm.describe_endpoint, {"EndpointName": name}),
        ("endpoint config", sm.describe_endpoint_config, {"EndpointConfigName": name}),
        ("model", sm.describe_model, {"ModelName": name}),
    ]
    return [what for what, call, kwargs in found if serving.exists(call, **kwargs)]


def create(sm: Any, requests: dict[str, dict[str, Any]]) -> None:
    sm.create_model(**requests["CreateModel"])
    sm.create_endpoint_config(**requests["CreateEndpointConfig"])
    sm.create_endpoint(**requests["CreateEndpoint"])


def wait(sm: Any, name: str, out: Callable[[str], None], poll_s: float = 30.0) -> dict[str, Any]:
    """Print each status change until the endpoint is InService or has failed; return its last description."""
    describe = lambda: sm.describe_endpoint(EndpointName=name)  # noqa: E731
    return serving.wait_for(describe, "EndpointStatus", ENDPOINT_TERMINAL, name, out, poll_s)


# ----------------------------------------------------------------------------------------------------------------
# InvokeEndpoint with the serving contract's JSON


def invoke(runtime: Any, name: str, rows: list[dict[str, str]], **options: Any) -> dict[str, Any]:
    """One InvokeEndpoint call: `{"dialogues": [...], "ids": [...]}` (plus `max_new_tokens`, `model`) in, the
    contract's JSON answer out. A 4xx from the container becomes one line with its `error`."""
    body = {"dialogues": [r["dialogue"] for r in rows], "ids": [r["id"] for r in rows]}
    body.update({k: v for k, v in options.items() if v is not None})
    data = json.dumps(body).encode("utf-8")
    params = {"EndpointName": name, "ContentType": CONTENT_TYPE, "Accept": CONTENT_TYPE}
    # The Body (a blob) is checked for its size alone, below.
    problems = service_model.problems("sagemaker-runtime", "InvokeEndpoint", {**params, "Body": ""})
    if problems:
        raise BadInput(*(f"{line}; fix ENDPOINT" for line in problems))
    if len(data) > MAX_BODY:
        raise BadInput(
            f"dialogues {rows[0]['id']} to {rows[-1]['id']} make a request of {len(data) / 2**20:.1f} MiB, more than "
            f"InvokeEndpoint's {MAX_BODY / 2**20:.0f} MiB; lower --batch"
        )
    try:
        answer = runtime.invoke_endpoint(**params, Body=data)
    except ClientError as e:
        error = e.response.get("Error", {})
        if error.get("Code") == "ModelError":
            status = e.response.get("OriginalStatusCode", "an error")
            raise LaunchError(
                f"endpoint {name} answered {status}: {_error_text(e.response.get('OriginalMessage') or error.get('Message', ''))}"
            ) from None
        if error.get("Code") in ("ValidationError", "ValidationException") and "not found" in error.get("Message", ""):
            raise LaunchError(
                f"no endpoint named {name!r} in this region (`python -m launch sagemaker endpoints` lists them)"
            ) from None
        raise
    text = answer["Body"].read().decode("utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise LaunchError(
            f"endpoint {name} answered with no JSON ({text[:80]!r}); is it serving this job's image?"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("summaries"), list) or len(data["summaries"]) != len(rows):
        raise LaunchError(f"endpoint {name} answered without one summary per dialogue; is it serving this job's image?")
    return data


def _error_text(message: str) -> str:
    try:
        found = json.loads(message)
    except (json.JSONDecodeError, TypeError):
        return message.strip().splitlines()[0] if message.strip() else "no message"
    return str(found.get("error", message)) if isinstance(found, dict) else message


def summarize(
    runtime: Any, name: str, rows: list[dict[str, str]], batch: int = BATCH, **options: Any
) -> list[dict[str, Any]]:
    """Every row through the endpoint, `batch` dialogues per request, in order: one answer line per row."""
    lines = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        data = invoke(runtime, name, chunk, **options)
        for summary in data["summaries"]:
            lines.append({**summary, "model": data.get("model"), "dtype": data.get("dtype"), "run": data.get("run")})
    return lines


def read_input(path: str, column: str = "dialogue") -> list[dict[str, str]]:
    """The dialogues of a JSON Lines file, as `python -m job predict --input` reads them (`dialogue`, optional `id`)."""
    from pathlib import Path

    from job.errors import JobError
    from job.predict import read_dialogues

    try:
        return read_dialogues(Path(path), column)
    except JobError as e:
        raise BadInput(str(e)) from None


# ----------------------------------------------------------------------------------------------------------------
# The check after deploying: a few test dialogues, scored like the run


def check_rows(run: serving.Run, n: int) -> list[dict[str, Any]]:
    return [p for p in run.predictions if p.get("dialogue") and p.get("references")][:n]


def check_report(run: serving.Run, rows: list[dict[str, Any]], answers: list[dict[str, Any]]) -> list[str]:
    """The endpoint's ROUGE on `rows` beside the run's own summaries of the same dialogues and its whole figure,
    scored with the job's scorer and rendered with the shared table."""
    from job import scoring

    references = [r["references"] for r in rows]
    served = [a["summary"] for a in answers]
    samples = 200
    blocks = [(f"endpoint ({len(rows)} test dialogues)", scoring.score(served, references, samples))]
    if all(isinstance(r.get("finetuned"), str) for r in rows):
        ran = [r["finetuned"] for r in rows]
        blocks.append(("run, same dialogues", scoring.score(ran, references, samples)))
        same = sum(a == b for a, b in zip(served, ran))
    else:
        same = None
    if run.metrics and run.metrics.get("finetuned"):
        n = (run.metrics.get("scorer") or {}).get("n_dialogues", "all")
        blocks.append((f"run, {n} dialogues (metrics.json)", run.metrics["finetuned"]))
    lines = ["check: ROUGE (F-measure x 100) of the endpoint's summaries, the job's scorer, beside the run's"]
    lines += tables.text(tables.block_rows(blocks)).splitlines()
    if same is not None:
        lines.append(
            f"same summary as the run's predictions.jsonl: {same} of {len(rows)} "
            "(on a GPU, batch composition can change greedy output)"
        )
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Delete and list


def delete(sm: Any, name: str) -> list[str]:
    """Delete the endpoint, then its config and the model(s) it serves; whatever of them is left of an earlier
    deploy of this name goes too. Returns one line per thing deleted."""
    done, config_name, models = [], name, {name}
    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
        config_name = endpoint["EndpointConfigName"]
        sm.delete_endpoint(EndpointName=name)
        done.append(f"deleted endpoint {name} (billing stops once it is gone)")
    except ClientError as e:
        if e.response["Error"]["Code"] != "ValidationException":
            raise
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        models |= {v["ModelName"] for v in config.get("ProductionVariants", [])}
        sm.delete_endpoint_config(EndpointConfigName=config_name)
        done.append(f"deleted endpoint config {config_name}")
    except ClientError as e:
        if e.response["Error"]["Code"] != "ValidationException":
            raise
    for model in sorted(models):
        if serving.exists(sm.describe_model, ModelName=model):
            sm.delete_model(ModelName=model)
            done.append(f"deleted model {model}")
    if not done:
        raise LaunchError(
            f"no endpoint, endpoint config or model named {name!r} in this region "
            "(`python -m launch sagemaker endpoints` lists them; check --region)"
        )
    return done


def running(sm: Any) -> list[dict[str, Any]]:
    """Every endpoint in the region with its instances and hourly price (from its config's variants)."""
    found = []
    for page in sm.get_paginator("list_endpoints").paginate():
        for item in page["Endpoints"]:
            endpoint = sm.describe_endpoint(EndpointName=item["EndpointName"])
            try:
                config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
                variants = {v["VariantName"]: v for v in config.get("ProductionVariants", [])}
            except ClientError:
                variants = {}
            described = endpoint.get("ProductionVariants") or [{"VariantName": n} for n in variants]
            instances, per_hour = [], 0.0
            for variant in described:
                spec = variants.get(variant["VariantName"], {})
                instance = variant.get("CurrentInstanceType") or spec.get("InstanceType") or "?"
                count = variant.get("CurrentInstanceCount", spec.get("InitialInstanceCount", 0))
                price = serving.hourly_price(instance)
                if per_hour is not None:
                    per_hour = None if price is None else per_hour + price * count
                instances.append(f"{count} x {instance}")
            bills = endpoint["EndpointStatus"] in ACTIVE
            found.append(
                {
                    "name": endpoint["EndpointName"],
                    "status": endpoint["EndpointStatus"],
                    "instances": ", ".join(instances) or "-",
                    "per_hour": (per_hour if bills else 0.0),
                    "created": endpoint.get("CreationTime"),
                }
            )
    return found


def endpoints_table(found: list[dict[str, Any]], transforms: list[dict[str, Any]] | None = None) -> list[str]:
    """The endpoints (and Batch Transform jobs in progress) with their hourly prices and the total."""
    transforms = transforms or []
    if not found and not transforms:
        return ["no endpoints and no transform jobs running in this region: nothing bills for serving"]
    rows = [["name", "kind", "status", "instances", "per hour", "since"]]
    for kind, items in (("endpoint", found), ("transform", transforms)):
        for e in items:
            cost = "?" if e["per_hour"] is None else f"${e['per_hour']:.3f}"
            since = e["created"].strftime("%Y-%m-%d %H:%M") if hasattr(e["created"], "strftime") else "-"
            rows.append([e["name"], kind, e["status"], e["instances"], cost, since])
    everything = found + transforms
    known = [e["per_hour"] for e in everything if e["per_hour"] is not None]
    total = f"total: ${sum(known):.3f}/h"
    if len(known) < len(everything):
        total += " (plus those priced '?': their instance types are not in job/prices.json)"
    return [*tables.text(rows).splitlines(), total, f"  {serving.price_note()}"]
