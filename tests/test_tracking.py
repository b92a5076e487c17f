"""MLflow tracking against a real MLflow server on 127.0.0.1 (sqlite backend, artifacts in a temp folder), started
once for the module: a tracked `test` run read back through MLflow's client (params, metric history, the figures of
metrics.json, the artifacts), a resumed run continuing the same MLflow run, and the server going away mid-run
(training goes on, the run folder is complete, a warning says so). The job runs in-process (`run_job_here`):
nothing here depends on signals or a process of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from job import config as config_mod
from job import logs, tracking
from job.errors import Interrupted
from tests.conftest import SCORE_KEYS, job_env, run_job_here
from tests.test_bad_inputs import QUICK_TRAIN

mlflow = pytest.importorskip("mlflow", reason="the full mlflow package (the dev extra) runs the tracking server")
from mlflow import MlflowClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` in a process group of its own (it starts uvicorn under it); `stop` ends the whole group, and
    the server stays down for the rest of the module. Its background job runner (a dozen huey consumers, for
    server-side jobs nothing here uses) is switched off."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log = open(root / "server.log", "wb")  # noqa: SIM115  closed in stop()
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
                *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
                *("--artifacts-destination", str(root / "artifacts")),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            start_new_session=True,
        )
        try:
            self.wait_until_up()
        except BaseException:
            self.stop()
            raise

    def wait_until_up(self, timeout_s: float = 600.0) -> None:
        """Seconds on an idle machine; minutes when the CPUs are shared by several test runs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer in {timeout_s:.0f} s")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)  # the group this server was started in, uvicorn with it
            except ProcessLookupError:
                break
            try:
                self.proc.wait(20)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        self.log.close()

    @property
    def up(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow"))
    yield s
    s.stop()


def client(server: Server) -> MlflowClient:
    assert server.up, "an earlier test stopped the server"
    return MlflowClient(tracking_uri=server.uri)


def the_run(c: MlflowClient, name: str, experiment: str = tracking.DEFAULT_EXPERIMENT):
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.RUN_TAG}` = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def step_lines(stdout: str) -> dict[str, list[tuple[int, float]]]:
    """The job's per-step `metrics:` lines as {name: [(step, value), ...]}."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in stdout.splitlines():
        if line.startswith("metrics: step="):
            pairs = dict(item.split("=", 1) for item in line.removeprefix("metrics: ").split())
            step = int(pairs.pop("step"))
            for key, value in pairs.items():
                out.setdefault(key, []).append((step, float(value)))
    return out


def test_a_run_is_tracked_with_its_params_metrics_and_artifacts(server, tmp_path):
    proc = run_job_here(
        *[
            "train",
            "--config",
            "test",
            f"output.uri={tmp_path}",
            "output.run_name=tracked",
            f"output.mlflow={server.uri}",
        ],
        env=job_env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "tracked"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    c = client(server)
    run = the_run(c, "tracked")
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"

    cfg = config_mod.resolve("test", [f"output.uri={tmp_path}", "output.run_name=tracked"])
    assert run.data.params["lora.r"] == "8" and run.data.params["train.learning_rate"] == "0.003"
    assert run.data.params == tracking.params(cfg)  # the whole resolved config, and nothing else
    assert "output.mlflow" not in run.data.params
    assert run.data.tags["dialogsum.config_hash"] == cfg.hash()

    # per step, under the names of the job's metrics: lines, at their steps
    printed = step_lines(proc.stdout)
    assert set(printed) == {"loss", "learning_rate", "grad_norm", "eval_loss"}
    for name, points in printed.items():
        history = [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, name)]
        assert [s for s, _ in history] == [s for s, _ in points], name
        assert [v for _, v in history] == pytest.approx([v for _, v in points], rel=1e-5), name

    # the final figures equal metrics.json
    logged = run.data.metrics
    for who in ("base", "finetuned"):
        assert SCORE_KEYS <= set(metrics[who])
        for m in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            assert logged[f"{who}_{m}"] == metrics[who][m]
            assert logged[f"{who}_first_reference_{m}"] == metrics[who]["first_reference"][m]
            assert logged[f"{who}_multi_reference_{m}"] == metrics[who]["multi_reference"][m]
            assert [logged[f"{who}_ci95_{m}_low"], logged[f"{who}_ci95_{m}_high"]] == metrics[who]["ci95"][m]
        assert logged[f"{who}_avg_words"] == metrics[who]["avg_words"]
        assert logged[f"{who}_length_ratio"] == metrics[who]["length_ratio"]
    assert logged["train_tokens_per_second"] == metrics["train"]["tokens_per_second"]
    assert {k: v for k, v in logged.items() if k not in printed} == tracking.final_metrics(metrics)

    # the artifacts, byte for byte
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"report.md", "loss.png", "metrics.json", "config.yaml", "adapter"} <= names
    adapter = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter
    down = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, dst_path=str(tmp_path / "back"), tracking_uri=server.uri
        )
    )
    for name in ("metrics.json", "report.md", "loss.png", "adapter/adapter_model.safetensors"):
        assert (down / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_a_resumed_run_continues_the_same_mlflow_run(server, tmp_path):
    """Two sessions of one run folder (a spot restart keeps only the checkpoints, so nothing but the tag links them)."""
    cfg = config_mod.resolve(
        "test", [f"output.uri={tmp_path}", "output.run_name=resumed", f"output.mlflow={server.uri}"]
    )
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    with pytest.raises(Interrupted), tracking.ended_on_failure():
        tracking.start(cfg, run_dir)
        logs.emit_metrics({"step": 1, "loss": 2.0})
        raise Interrupted("stopped by SIGTERM at step 1")
    c = client(server)
    first = the_run(c, "resumed")
    assert first.info.status == "KILLED"
    tracker = tracking.start(cfg, run_dir)
    logs.emit_metrics({"step": 2, "loss": 1.5})
    tracker.finish()
    again = the_run(c, "resumed")
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert [(m.step, m.value) for m in c.get_metric_history(again.info.run_id, "loss")] == [(1, 2.0), (2, 1.5)]


def test_output_mlflow_is_not_part_of_the_config_hash():
    plain = config_mod.resolve("test", [])
    tracked = config_mod.resolve("test", ["output.mlflow=http://127.0.0.1:5000", "output.mlflow_experiment=x"])
    assert plain.hash() == tracked.hash()
    assert plain.hash() != config_mod.resolve("test", ["lora.r=4"]).hash()


def test_an_http_servers_credential_comes_from_secrets_manager_and_is_redacted(monkeypatch):
    """What `launch sagemaker --mlflow-secret` sets up: the job reads the secret with its own credentials (moto)."""
    password = "PLANTED-mlflow-password-0123"
    for name in (*tracking.CREDENTIALS, "AWS_PROFILE"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(tracking.SECRET_ID_ENV, "team/mlflow")
    monkeypatch.setattr(logs, "_SECRETS", set())
    with mock_aws():
        secret = {"MLFLOW_TRACKING_USERNAME": "alice-the-user", "MLFLOW_TRACKING_PASSWORD": password}
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(
            Name="team/mlflow", SecretString=json.dumps(secret)
        )
        assert tracking.resolve_credentials() == "AWS Secrets Manager (team/mlflow)"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == password  # where MLflow's client reads it
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice-the-user"
    assert logs.redact(f"Authorization failed for {password}") == "Authorization failed for ***"


def test_the_server_going_away_mid_run_never_stalls_training(server, tmp_path):
    """The server is stopped at the first training step: the run goes on and completes, the warning says what
    happened, and the final log is tried again at the end. MLflow's own client defaults (7 retries, backoff 2,
    120 s per request) would hold each failed call for minutes; the run trains in seconds."""

    def stop_at_first_step(values: dict) -> None:
        if values.get("step") == 1 and server.up:
            server.stop()

    logs.add_metrics_sink(stop_at_first_step)
    try:
        proc = run_job_here(
            *[
                *("train", "--config", "test", f"output.uri={tmp_path}", "output.run_name=down"),
                *(f"output.mlflow={server.uri}", *QUICK_TRAIN),
            ],
            env=job_env(),
        )
    finally:
        logs.remove_metrics_sink(stop_at_first_step)
    assert not server.up
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "down"
    for name in ("manifest.json", "metrics.json", "report.md", "loss.png", "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert [s for s, _ in step_lines(proc.stdout)["loss"]] == [1, 2, 3, 4]  # every step trained and reported
    assert re.search(r"WARNING job\.tracking: MLflow tracking server http://127\.0\.0\.1:\d+ did not take", proc.stderr)
    assert "MLflow: the run was not fully logged" in proc.stderr and "the final log failed twice" in proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["seconds"] < 120
