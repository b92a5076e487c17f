"""Where the job runs, decided in one place: SageMaker, Kaggle or anywhere else.

Everything platform-specific the job needs (hyperparameters, input channels, the model and
checkpoint folders, the failure file) is read from the environment here and nowhere else.
Imports neither torch nor any platform SDK.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

OPT_ML = Path("/opt/ml")
KAGGLE_WORKING = Path("/kaggle/working")


def platform() -> str:
    """`sagemaker`, `kaggle` or `local`."""
    if os.environ.get("TRAINING_JOB_NAME") or os.environ.get("SM_MODEL_DIR") or os.environ.get("SM_HPS"):
        return "sagemaker"
    if (OPT_ML / "input" / "config" / "hyperparameters.json").is_file():
        return "sagemaker"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"):
        return "kaggle"
    return "local"


def hyperparameters() -> dict[str, Any]:
    """SageMaker hyperparameters: the JSON file the platform writes, string values exactly as sent; `SM_HPS` only
    where that file is absent. SageMaker's drivers set `SM_HPS` with each value JSON-decoded once more (the
    string "1234" becomes a number there), so it is never preferred over the file."""
    path = OPT_ML / "input" / "config" / "hyperparameters.json"
    if path.is_file():
        return json.loads(path.read_text())
    if os.environ.get("SM_HPS"):
        return json.loads(os.environ["SM_HPS"])
    return {}


TUNING_OBJECTIVE = "_tuning_objective_metric"
"""The hyperparameter SageMaker's automatic model tuning adds to each trial: the objective metric's name."""


def tuning_objective() -> str | None:
    """The objective metric (`validation:rougeL`) when this job is a trial of a SageMaker tuning job, else None."""
    if platform() != "sagemaker":
        return None
    value = hyperparameters().get(TUNING_OBJECTIVE)
    return str(value) if value else None


def exit_on_sigterm() -> None:
    """Make SIGTERM end this process at once with exit code 143, also as PID 1 (where the kernel drops a signal
    that has no handler). For the start-up: training replaces this with its checkpointing handler.

    Before training there is nothing to save, so the process leaves without the interpreter's shutdown: a stop that
    lands while a C extension (torch, bitsandbytes) is importing can make that shutdown crash (exit 139 instead of
    143, seen once in the container under load)."""

    def handler(signum: int, frame: object) -> None:
        hard_exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def hard_exit(code: int) -> None:
    """End the process now with `code`, its output flushed, without the interpreter's shutdown: from a signal
    handler, or from the watchdog's thread while the main thread is stuck in a C call that never returns (a normal
    exit would wait for it). Log records are written and flushed as they are emitted, so none is lost."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def default_run_name(config_hash: str, now: datetime | None = None) -> str:
    """The SageMaker job name on SageMaker; `<UTC yyyymmdd-hhmmss>-<config hash>` elsewhere."""
    if os.environ.get("TRAINING_JOB_NAME"):
        return os.environ["TRAINING_JOB_NAME"]
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{config_hash}"


def channel_dir(name: str) -> Path:
    """The folder of a SageMaker input channel (`SM_CHANNEL_<NAME>` or /opt/ml/input/data/<name>)."""
    env = os.environ.get(f"SM_CHANNEL_{name.upper()}")
    return Path(env) if env else OPT_ML / "input" / "data" / name


CHANNEL = "channel:"
"""`channel:NAME` as data.dataset or model.name: the SageMaker input channel NAME."""

STAGED_MODEL = "staged-model.json"
"""Beside the weights `python -m launch sagemaker stage-model` copied to S3: the hub id and commit they are."""


BASE_MODEL_ENV = "BASE_MODEL_DIR"
"""Set on a SageMaker model whose base comes staged beside the run (`deploy|transform --model-s3`): the folder of
those weights, which `python -m job serve` loads the base from instead of model.name (no Hub, no token)."""

ADDITIONAL_MODEL_DATA = OPT_ML / "additional-model-data-sources"
"""Where an endpoint's or transform job's container finds each AdditionalModelDataSources entry, by channel name."""


def channel_path(spec: str) -> Path | None:
    """The folder of a `channel:NAME` value; None for any other value."""
    return channel_dir(spec.removeprefix(CHANNEL)) if spec.startswith(CHANNEL) else None


def model_dir() -> Path | None:
    """SageMaker's model folder (uploaded as the job's model artifact), or None off SageMaker."""
    if platform() != "sagemaker":
        return None
    return Path(os.environ.get("SM_MODEL_DIR", OPT_ML / "model"))


def default_checkpoint_dir(run_dir: Path) -> Path:
    """/opt/ml/checkpoints on SageMaker (synced with S3), /kaggle/working/checkpoints on Kaggle, else in the run.
    A tuning trial keeps its own in /opt/ml/checkpoints/<training job name>: every trial of a tuning job syncs the
    same S3 prefix, and a spot restart of a trial keeps its name."""
    where = platform()
    if where == "sagemaker":
        job_name = os.environ.get("TRAINING_JOB_NAME")
        if job_name and tuning_objective():
            return OPT_ML / "checkpoints" / job_name
        return OPT_ML / "checkpoints"
    if where == "kaggle":
        return KAGGLE_WORKING / "checkpoints"
    return run_dir / "checkpoints"


def write_failure(reason: str) -> None:
    """On SageMaker, the first 1024 characters of /opt/ml/output/failure become the job's FailureReason."""
    if platform() != "sagemaker":
        return
    try:
        path = OPT_ML / "output" / "failure"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason[:1024])
    except OSError:
        pass


def distributed() -> bool:
    """True under torchrun / accelerate launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def pin_single_gpu() -> str | None:
    """One process with several visible GPUs uses the first only: a 4-bit model must never be wrapped in
    DataParallel. Must run before CUDA initialises. Returns a message when it pinned."""
    if distributed():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
        if len(ids) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[0]
            return f"several GPUs visible ({visible}); this single process uses GPU {ids[0]} (run under torchrun to use all)"
        return None
    try:  # nvidia-smi, not torch: asking torch would initialise CUDA before the variable is set
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    n = listing.count("GPU ")
    if n > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
        return f"{n} GPUs visible; this single process uses GPU 0 (run under torchrun to use all)"
    return None


def rank() -> int:
    """This process's global rank under torchrun (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0
