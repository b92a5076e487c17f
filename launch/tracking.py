"""`--mlflow ARN_OR_URI` for the launchers: where the job tracks its run in MLflow (docs/tracking.md).

The URI reaches the job as `MLFLOW_TRACKING_URI` (SageMaker: the request's Environment; docker: `-e`; Kaggle: the
kernel's settings); a credential for an http(s) server never travels with it: SageMaker reads it from Secrets
Manager (`--mlflow-secret`), docker passes the variables by name, Kaggle reads its own secrets. The job checks the URI
with the same rule (`job.uri.tracking_problem`). Imports no torch and no mlflow.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from job import tracking as job_tracking
from job.uri import SAGEMAKER_MLFLOW_ARN, tracking_problem

TRACKING_SERVER_ACTIONS = (
    "sagemaker-mlflow:GetExperimentByName",
    "sagemaker-mlflow:CreateExperiment",
    "sagemaker-mlflow:SearchRuns",
    "sagemaker-mlflow:CreateRun",
    "sagemaker-mlflow:GetRun",
    "sagemaker-mlflow:UpdateRun",
    "sagemaker-mlflow:LogBatch",
)
"""The MLflow calls the job makes, as IAM actions on a SageMaker MLflow tracking server."""
APP_ACTIONS = ("sagemaker:CallMlflowAppApi", *TRACKING_SERVER_ACTIONS)
"""An MLflow app is called through SageMaker's own API as well."""
ARTIFACT_ACTIONS = ("s3:PutObject", "s3:GetObject", "s3:ListBucket")
"""The client writes artifacts straight into the server's artifact store (an S3 bucket) with the job's role."""


def add_option(parser: argparse.ArgumentParser, secret_option: bool = False) -> None:
    parser.add_argument(
        "--mlflow",
        metavar="ARN_OR_URI",
        help="track the run in MLflow: a SageMaker MLflow ARN or an http(s):// tracking server (docs/tracking.md)",
    )
    if secret_option:
        parser.add_argument(
            "--mlflow-secret",
            metavar="ID",
            help="Secrets Manager id or ARN holding the http(s) server's MLFLOW_TRACKING_TOKEN (or "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD as JSON)",
        )


def uri_of(args: argparse.Namespace) -> str | None:
    return getattr(args, "mlflow", None) or None


def problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with --mlflow / --mlflow-secret, in the words the job would use."""
    uri, secret = uri_of(args), getattr(args, "mlflow_secret", None)
    out = []
    if uri and (problem := tracking_problem(uri)):
        out.append(f"--mlflow: {problem}")
    elif uri and uri.startswith(("file:", "sqlite:")):
        out.append(
            f"--mlflow {uri}: a local store on this machine is out of the job's reach; give an ARN or http(s)://"
        )
    if secret and not uri:
        out.append("--mlflow-secret holds the tracking server's credential: give --mlflow too")
    if secret and uri and SAGEMAKER_MLFLOW_ARN.match(uri):
        out.append("--mlflow-secret: a SageMaker MLflow ARN signs its calls with the job's role; leave the secret out")
    return out


def environment(args: argparse.Namespace) -> dict[str, str]:
    """The job's environment variables for --mlflow and --mlflow-secret (the secret's id, never its value)."""
    uri, secret = uri_of(args), getattr(args, "mlflow_secret", None)
    env = {job_tracking.URI_ENV: uri} if uri else {}
    if uri and secret:
        env[job_tracking.SECRET_ID_ENV] = secret
    return env


def local_credentials() -> list[str]:
    """The tracking credentials set in this shell, which no request may carry."""
    return [v for name in job_tracking.CREDENTIALS if len(v := os.environ.get(name, "")) >= 8]


def credential_names() -> list[str]:
    """The credential variables set in this shell, to hand to a container by name (`-e NAME`)."""
    return [name for name in job_tracking.CREDENTIALS if os.environ.get(name)]


def role_policy(uri: str, region: str, secret_arn: str | None = None) -> dict[str, Any] | None:
    """The inline policy the execution role needs to track to a SageMaker MLflow ARN (or to read the credential of an
    http(s) server); None when it needs nothing."""
    statements: list[dict[str, Any]] = []
    if SAGEMAKER_MLFLOW_ARN.match(uri):
        actions = APP_ACTIONS if ":mlflow-app/" in uri else TRACKING_SERVER_ACTIONS
        statements.append({"Effect": "Allow", "Action": list(actions), "Resource": uri})
        statements.append(
            {
                "Effect": "Allow",
                "Action": list(ARTIFACT_ACTIONS),
                "Resource": ["arn:aws:s3:::<artifact store bucket>", "arn:aws:s3:::<artifact store bucket>/*"],
            }
        )
    if secret_arn:
        statements.append({"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": secret_arn})
    return {"Version": "2012-10-17", "Statement": statements} if statements else None
