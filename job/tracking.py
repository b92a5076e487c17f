"""Experiment tracking in MLflow: `output.mlflow` (or `MLFLOW_TRACKING_URI`) names an `http(s)://` tracking server,
a local `file:` or `sqlite:` store, or a SageMaker MLflow ARN (through the `sagemaker-mlflow` plugin).

A run logs the resolved config as params, every `metrics:` line with a step under its own names (`loss`,
`learning_rate`, `grad_norm`, `eval_loss`), the figures of metrics.json (ROUGE of the base and fine-tuned models and
the baselines, intervals, lengths, training figures) and report.md, loss.png, metrics.json, config.yaml and the
adapter as artifacts. The MLflow run is named after the run folder and tagged with it, so a resumed run (a spot
restart keeps only the checkpoints) finds and continues the same MLflow run.

The tracking server is never in training's way: every MLflow call runs on one background thread with short
timeouts and few retries (MLflow's client otherwise retries for minutes). A server that is slow, down or refusing
gets one warning; what it missed is kept and sent when it answers again, and once more at the end of the run. The
run folder never depends on it. This module imports neither mlflow nor torch until a run is tracked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job import logs, runtime
from job.errors import ConfigInputError, Interrupted
from job.uri import redact_userinfo as redacted_uri
from job.uri import tracking_problem

if TYPE_CHECKING:
    from job.config import Config

log = logging.getLogger(__name__)

URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
SECRET_ID_ENV = "MLFLOW_TRACKING_SECRET_ID"
"""A Secrets Manager secret holding the tracking server's credential (set by `launch sagemaker --mlflow-secret`)."""
CREDENTIALS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
"""The variables MLflow's client reads its http(s) credential from; also the keys of a secret and Kaggle's names."""
DEFAULT_EXPERIMENT = "dialogsum-qlora"
RUN_TAG = "dialogsum.run_folder"
"""The tag a resumed run is found by: the run folder's name."""

CLIENT_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow's client defaults are 7 retries, backoff factor 2 and 120 s per request (minutes per call); these keep
one call under a minute. A value already set in the environment is kept."""
RETRY_AFTER_S = 60.0
"""After a failed call, what arrives is kept and the next try waits this long (the final log always tries)."""
FINISH_WAIT_S = 180.0
"""How long the end of the run waits for the final log, its retry included."""
ABORT_WAIT_S = 15.0
"""How long a failed run waits to mark its MLflow run failed."""
BATCH = 1000
"""MLflow's log_batch takes at most 1000 metrics or 100 params per call."""

FINAL_BLOCKS = ("base", "finetuned", "train")
ARTIFACT_FILES = ("report.md", "loss.png", "metrics.json", "config.yaml")
ARTIFACT_FOLDERS = ("adapter", "model")


def tracking_uri(cfg: Config) -> str | None:
    """`output.mlflow`, else `MLFLOW_TRACKING_URI`, else None (no tracking)."""
    return cfg.output.mlflow or os.environ.get(URI_ENV, "").strip() or None


def experiment_name(cfg: Config) -> str:
    return cfg.output.mlflow_experiment or os.environ.get(EXPERIMENT_ENV, "").strip() or DEFAULT_EXPERIMENT


def check(cfg: Config) -> str | None:
    """The tracking URI this run logs to, checked (its form, and the packages its kind needs); None: no tracking."""
    uri = tracking_uri(cfg)
    if uri is None:
        return None
    where = "output.mlflow" if cfg.output.mlflow else URI_ENV
    problem = tracking_problem(uri)
    if problem:
        raise ConfigInputError(f"{where}: {problem}")
    needs = {"sqlite:": ("sqlalchemy", "mlflow"), "arn:": ("sagemaker_mlflow", "sagemaker-mlflow")}
    for prefix, (module, package) in needs.items():
        if uri.startswith(prefix) and not _importable(module):
            raise ConfigInputError(
                f"{where}={redacted_uri(uri)} needs the {package} package, which is not installed here; install it "
                f"(pip install {package}) or track to an http(s):// server"
            )
    if not _importable("mlflow"):
        raise ConfigInputError(f"{where} is set but mlflow is not installed; pip install mlflow-skinny, or unset it")
    return uri


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def resolve_credentials() -> str | None:
    """The tracking server's credential into the environment MLflow's client reads, from the first source that has
    one: the environment, a Secrets Manager secret (`MLFLOW_TRACKING_SECRET_ID`: JSON with the names of
    `CREDENTIALS` as keys, or the token alone), Kaggle's user secrets of those names. Every value is registered
    with the logging filter that redacts secrets. Returns where it came from."""
    from job import secrets

    found = {name: os.environ[name] for name in CREDENTIALS if os.environ.get(name, "").strip()}
    source = "the environment" if found else None
    secret_id = os.environ.get(SECRET_ID_ENV, "").strip()
    if not found and secret_id:
        text = secrets.read_secret_string(secret_id, SECRET_ID_ENV)
        found, source = _credential_from_secret(secret_id, text), f"AWS Secrets Manager ({secret_id})"
    if not found and runtime.platform() == "kaggle":
        found = {name: value for name in CREDENTIALS if (value := secrets.kaggle_secret(name))}
        source = "Kaggle secrets" if found else None
    for name, value in found.items():
        logs.register_secret(value.strip())
        os.environ[name] = value.strip()
    return source


def _credential_from_secret(secret_id: str, text: str | None) -> dict[str, str]:
    stripped = (text or "").strip()
    if not stripped.startswith("{"):
        return {"MLFLOW_TRACKING_TOKEN": stripped} if stripped else {}
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        raise ConfigInputError(
            f"secret {secret_id} ({SECRET_ID_ENV}) starts with '{{' but is not valid JSON; store the token or JSON"
        ) from None
    found = {k: str(v) for k, v in data.items() if k in CREDENTIALS and v} if isinstance(data, dict) else {}
    if not found:
        raise ConfigInputError(
            f"secret {secret_id} ({SECRET_ID_ENV}) is JSON without any of the keys {', '.join(CREDENTIALS)}; add one"
        )
    return found


# ----------------------------------------------------------------------------------------------
# What is logged


def params(cfg: Config) -> dict[str, str]:
    """The resolved config as dotted-key params (where the tracking server is, is not a parameter of the run)."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    out = {}
    for key, value in _flatten(cfg.to_dict(), ".").items():
        if key in ("output.mlflow", "output.mlflow_experiment"):
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        out[key] = text[:MAX_PARAM_VAL_LENGTH]
    return out


def final_metrics(metrics: dict) -> dict[str, float]:
    """The figures of metrics.json: `base_rouge1`, `finetuned_ci95_rougeL_low`, `one_shot_avg_words`,
    `train_tokens_per_second`, ... (the names of the job's final `metrics:` line, extended to every figure)."""
    blocks = {name: metrics.get(name) for name in FINAL_BLOCKS} | dict(metrics.get("baselines") or {})
    tree = {name: block for name, block in blocks.items() if block}
    tree["run"] = {"seconds": (metrics.get("run") or {}).get("seconds")}
    return {
        key: float(value)
        for key, value in _flatten(tree, "_").items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _flatten(tree: dict, sep: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, sep, f"{name}{sep}"))
        elif sep == "_" and isinstance(value, list) and len(value) == 2:  # an interval
            out[f"{name}_low"], out[f"{name}_high"] = value
        else:
            out[name] = value
    return out


# ----------------------------------------------------------------------------------------------
# The tracker: every MLflow call on one background thread


@dataclass
class _Work:
    """What is still to be sent, in order: opening the run, then metrics, then the end."""

    opened: bool = False
    metrics: list = field(default_factory=list)  # mlflow Metric entities, in the order they were logged
    final: tuple[Path, str] | None = None  # (run folder, status) once the run ended

    def empty(self) -> bool:
        return self.opened and not self.metrics and self.final is None


class Tracker:
    """Logs one run folder's run to MLflow from a background thread; `log_metrics` and `finish` never block on the
    server beyond `FINISH_WAIT_S`."""

    def __init__(self, cfg: Config, uri: str, run_dir: Path):
        from mlflow import MlflowClient

        self.uri, self.run_dir, self.cfg = uri, run_dir, cfg
        self.experiment = experiment_name(cfg)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self.work = _Work()
        self.inbox: queue.Queue = queue.Queue()
        self.failed_at: float | None = None  # when the last call failed (None: the server answers)
        self.warned = False
        self.ended = False
        self.final_sent = False
        self.thread = threading.Thread(target=self._loop, name="mlflow-tracking", daemon=True)
        self.thread.start()

    # called from the job's thread

    def log_metrics(self, values: dict[str, Any]) -> None:
        """A `metrics:` line: one with a step (training, validation) is logged at that step under its names."""
        if "step" not in values:
            return  # the final figures come from metrics.json, every one of them
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(values["step"])
        batch = [Metric(k, float(v), stamp, step) for k, v in values.items() if k != "step" and _number(v)]
        self.inbox.put(("metrics", batch))

    def finish(self, status: str = "FINISHED", wait_s: float = FINISH_WAIT_S) -> None:
        """Send what is left, the final figures and the artifacts (trying once more if that fails), and end."""
        global _active
        logs.remove_metrics_sink(self.log_metrics)
        if _active is self:
            _active = None
        if self.ended:
            return
        self.ended = True
        self.inbox.put(("final", (self.run_dir, status)))
        self.thread.join(wait_s)
        if self.thread.is_alive() or not self.work.empty():
            log.warning(
                "MLflow: the run was not fully logged to %s (%s); the run folder %s holds everything",
                redacted_uri(self.uri),
                "still waiting for the server" if self.thread.is_alive() else "the final log failed twice",
                self.run_dir,
            )
        else:
            log.info("MLflow: logged run %s (%s) to %s", self.run_dir.name, self.run_id, redacted_uri(self.uri))

    # the background thread

    def _loop(self) -> None:
        while True:
            kind, payload = self.inbox.get()
            if kind == "metrics":
                self.work.metrics += payload
            else:
                self.work.final = payload
            if self.work.final is not None:
                self._send() or self._send()  # the final log, and its one retry
                return
            if self.failed_at is None or time.monotonic() - self.failed_at >= RETRY_AFTER_S:
                self._send()

    def _send(self) -> bool:
        """Send everything pending, in order; False (and a warning the first time) when a call fails."""
        try:
            if not self.work.opened:
                self._open()
                self.work.opened = True
            while self.work.metrics:
                chunk = self.work.metrics[:BATCH]
                self.client.log_batch(self.run_id, metrics=chunk)
                del self.work.metrics[: len(chunk)]
            if self.work.final is not None:
                self._close(*self.work.final)
                self.work.final = None
        except Exception as e:  # noqa: BLE001  whatever the server or the network does, training goes on
            self.failed_at = time.monotonic()
            message = logs.redact(str(e)).splitlines()[0][:300] if str(e) else ""
            if not self.warned:
                log.warning(
                    "MLflow tracking server %s did not take the run's logs (%s: %s); training goes on, the run folder "
                    "keeps everything, and the logs are sent again when it answers and at the end of the run",
                    redacted_uri(self.uri),
                    e.__class__.__name__,
                    message,
                )
                self.warned = True
            else:
                log.info("MLflow: still not logging (%s: %s)", e.__class__.__name__, message)
            return False
        if self.failed_at is not None:
            log.info("MLflow: the tracking server answers again; the kept logs were sent")
        self.failed_at = None
        return True

    def _open(self) -> None:
        """Find this run folder's MLflow run (a resumed run continues it) or create it, and log the params."""
        from mlflow.entities import Param

        client, name = self.client, self.run_dir.name
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            experiment_id = client.create_experiment(self.experiment, artifact_location=_local_artifacts(self.uri))
        else:
            experiment_id = experiment.experiment_id
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{name}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            logged = found[0].data.params
            log.info("MLflow: continuing run %s (%s) in experiment %s", name, self.run_id, self.experiment)
        else:
            tags = {
                RUN_TAG: name,
                "dialogsum.config_hash": self.cfg.hash(),
                "dialogsum.platform": runtime.platform(),
                "dialogsum.output_uri": self.cfg.output.uri,
            }
            self.run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            logged = {}
            log.info("MLflow: run %s (%s) in experiment %s", name, self.run_id, self.experiment)
        todo = [Param(k, v) for k, v in params(self.cfg).items() if k not in logged]
        for i in range(0, len(todo), 100):
            client.log_batch(self.run_id, params=todo[i : i + 100])

    def _close(self, run_dir: Path, status: str) -> None:
        """The final figures and the artifacts of a finished run, then the run's status."""
        from mlflow.entities import Metric

        metrics_file = run_dir / "metrics.json"
        if status == "FINISHED" and metrics_file.is_file():
            if not self.final_sent:  # a retry after a failed upload sends the figures once only
                stamp = int(time.time() * 1000)
                figures = final_metrics(json.loads(metrics_file.read_text(encoding="utf-8")))
                entries = [Metric(k, v, stamp, 0) for k, v in figures.items()]
                for i in range(0, len(entries), BATCH):
                    self.client.log_batch(self.run_id, metrics=entries[i : i + BATCH])
                self.final_sent = True
            for name in ARTIFACT_FILES:
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
            for name in ARTIFACT_FOLDERS:
                if (run_dir / name).is_dir():
                    self.client.log_artifacts(self.run_id, str(run_dir / name), artifact_path=name)
        self.client.set_terminated(self.run_id, status)


def _local_artifacts(uri: str) -> str | None:
    """A `sqlite:` store's artifacts beside its database file (MLflow's default, ./mlruns, depends on the working
    folder); None: the store's own default (a server's artifact root, a `file:` store's folder)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _NotTracked:
    def finish(self, status: str = "FINISHED", wait_s: float = FINISH_WAIT_S) -> None:
        pass


_active: Tracker | None = None
"""The tracker of the run in progress in this process, which `ended_on_failure` ends when the run fails."""


def start(cfg: Config, run_dir: Path) -> Tracker | _NotTracked:
    """The tracker of this run (rank 0 only), fed by every `metrics:` line; a stand-in when nothing is tracked.
    `finish()` ends it once the run folder is complete."""
    global _active
    uri = check(cfg)
    if uri is None or not runtime.is_main_process():
        return _NotTracked()
    for name, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(name, value)
    source = resolve_credentials()
    _active = tracker = Tracker(cfg, uri, run_dir)
    logs.add_metrics_sink(tracker.log_metrics)
    log.info(
        "MLflow: tracking to %s, experiment %s%s",
        redacted_uri(uri),
        tracker.experiment,
        f" (credential from {source})" if source else "",
    )
    return tracker


@contextlib.contextmanager
def ended_on_failure() -> Iterator[None]:
    """A run tracked inside the block that fails ends KILLED when SIGTERM stopped it (a resume continues it), FAILED
    on any other error; waiting `ABORT_WAIT_S` at most. Nothing here ever fails the run."""
    try:
        yield
    except BaseException as e:
        if _active is not None:
            _active.finish("KILLED" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "FAILED", ABORT_WAIT_S)
        raise
