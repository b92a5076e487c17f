"""The code file of the Kaggle kernel that `python -m launch kaggle` pushes: it runs the job on Kaggle's GPU.

Kaggle uploads a kernel's single code file and nothing else, so the launcher writes this file with PAYLOAD (a
base64 tar.gz of the `job` package, the resolved config and the requirements) and SETTINGS filled in. In the
kernel it: unpacks the job, checks the Hugging Face token (seconds, before anything is installed), counts the GPUs,
installs its requirements without touching Kaggle's preinstalled torch, copies the previous version's
checkpoints in on a resumed version, and runs `python -m job train` (under torchrun, one process per GPU, on T4 x2)
with the run folder under the working folder.
Before Kaggle's session limit it stops the job (which checkpoints on SIGTERM) and ends cleanly, so the checkpoints
are kept as the version's output for the next `--resume` version.

It needs only the standard library and the unpacked job's torch-free modules (and numpy, in Kaggle's image): it
runs before the job's requirements are installed. Locally (tests, debugging) the folders come from
DIALOGSUM_WORKING_DIR and DIALOGSUM_INPUT_DIR, DIALOGSUM_SKIP_INSTALL=1 skips pip, and DIALOGSUM_STOP_AFTER_S
shortens the time budget.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SETTINGS: dict[str, Any] = {}  # filled in by the launcher: kernel, run_name, model, resume, stop_after_s
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # SETTINGS["mlflow"], where given, reaches the job as this variable

EXIT_AUTH = 4  # the job's exit code for credential problems (job.errors.AuthError)
SECRET_NAME = "HF_TOKEN"
SESSION_LIMIT_FILE = "session-limit.json"  # in the working folder: the version stopped early and can be resumed
STOP_GRACE_S = 15 * 60  # after SIGTERM the job finishes its step and writes a checkpoint; a 3B adapter takes seconds


def say(message: str) -> None:
    print(f"[kernel] {message}", flush=True)


def working_dir() -> Path:
    return Path(os.environ.get("DIALOGSUM_WORKING_DIR", "/kaggle/working"))


def input_dir() -> Path:
    return Path(os.environ.get("DIALOGSUM_INPUT_DIR", "/kaggle/input"))


def stop_after_s(settings: dict[str, Any]) -> float:
    """Seconds after the kernel starts when the job is stopped, so the version ends (and Kaggle keeps its output)
    before the session's hard limit."""
    return float(os.environ.get("DIALOGSUM_STOP_AFTER_S", settings["stop_after_s"]))


class KernelError(Exception):
    """A failure the user fixes; the message says how. `code` becomes the kernel's exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------
# The Hugging Face token, checked before anything slow


def read_kaggle_secret() -> str | None:
    """The HF_TOKEN secret attached to this kernel in the web UI, or None when it is not attached."""
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return None
    try:
        value = UserSecretsClient().get_secret(SECRET_NAME)
    except Exception:  # noqa: BLE001  the client raises plain exceptions when the secret is not attached
        return None
    return (value or "").strip() or None


def hub_access(model: str) -> str:
    """`public`, `gated`, `private` (not visible without a token) or `unknown` (the Hub could not be asked)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/{model}", timeout=15) as response:
            info = json.load(response)
    except urllib.error.HTTPError as e:
        return "private" if e.code in (401, 403, 404) else "unknown"
    except (urllib.error.URLError, OSError, ValueError):
        return "unknown"
    return "gated" if info.get("gated") not in (False, None, "false") else "public"


def secret_instruction(kernel: str) -> str:
    return (
        f"open https://www.kaggle.com/code/{kernel}/edit, choose Add-ons > Secrets, add a secret named {SECRET_NAME} "
        "holding a Hugging Face token of an account that has access to the model, switch it on for this notebook, "
        "then push again"
    )


def hf_token(model: str, kernel: str) -> str | None:
    """The token for a hub model; fails in seconds when the model needs one and no secret is attached."""
    from job.secrets import is_hub_id  # the unpacked job's own rule: builtin: models and local folders need none

    if not is_hub_id(model):
        say(f"model {model}: no Hugging Face token needed")
        return None
    token = read_kaggle_secret()
    if token:
        say(f"Hugging Face token: from the Kaggle secret {SECRET_NAME}")
        return token
    access = hub_access(model)
    if access == "gated":
        raise KernelError(
            f"{model} is gated and no Kaggle secret {SECRET_NAME} is attached to this notebook: "
            + secret_instruction(kernel),
            EXIT_AUTH,
        )
    if access == "private":
        raise KernelError(
            f"{model} was not found on the Hub without a token (a private or misspelled repository); check "
            f"model.name, or {secret_instruction(kernel)}",
            EXIT_AUTH,
        )
    say(f"no Kaggle secret {SECRET_NAME} attached; {model} is {access}, continuing without a token")
    return None


# ----------------------------------------------------------------------------------------------
# GPUs, the job's source and its requirements


def gpu_count() -> int:
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def processes(gpus: int) -> int:
    """Training processes: one per GPU, each with its own 4-bit model under torchrun (DDP); a 4-bit model is never
    wrapped in DataParallel. DIALOGSUM_NPROC overrides it (two CPU processes in a local test)."""
    count = int(os.environ.get("DIALOGSUM_NPROC", gpus or 1))
    say(f"GPUs visible: {gpus}; training processes: {count}" + (" under torchrun" if count > 1 else ""))
    return count


def unpack(payload: str, dest: Path) -> None:
    archive = tarfile.open(fileobj=io.BytesIO(base64.b64decode(payload)), mode="r:gz")
    with archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # Python before 3.11.4; the archive is our own
            archive.extractall(dest)


def torch_constraints() -> str:
    """`torch==...` lines of the preinstalled torch family, so pip keeps Kaggle's CUDA build instead of replacing it."""
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    return "".join(line + "\n" for line in frozen.splitlines() if line.startswith("torch") and "==" in line)


def install_requirements(src: Path) -> None:
    if os.environ.get("DIALOGSUM_SKIP_INSTALL") == "1":
        say("DIALOGSUM_SKIP_INSTALL=1: not installing requirements")
        return
    constraints = src / "constraints.txt"
    constraints.write_text(torch_constraints(), encoding="utf-8")
    say("installing requirements (torch stays: " + (" ".join(constraints.read_text().split()) or "none found") + ")")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "-r", str(src / "requirements.txt")]
    done = subprocess.run([*command, "-c", str(constraints)])
    if done.returncode != 0:
        raise KernelError(
            "pip could not install the job's requirements (see above); check that the kernel has internet on "
            "(a phone-verified account) and that no pin conflicts with Kaggle's torch",
            done.returncode,
        )


# ----------------------------------------------------------------------------------------------
# Resuming from the previous version's checkpoints


def previous_checkpoints(root: Path, slug: str) -> Path | None:
    """The `checkpoints/` folder of the attached previous version: /kaggle/input/<slug>/checkpoints, or wherever
    Kaggle mounted it below the input folder (the layout has changed before)."""
    candidates = [root / slug / "checkpoints"]
    for depth in ("*", "*/*", "*/*/*"):
        candidates += sorted(root.glob(f"{depth}/checkpoints"), key=lambda p: slug not in p.parts)
    for path in candidates:
        if path.is_dir() and any(path.glob("checkpoint-*")):
            return path
    return None


def restore_checkpoints(slug: str, dest: Path) -> None:
    found = previous_checkpoints(input_dir(), slug)
    if found is None:
        say(f"resume: no checkpoints from a previous version under {input_dir()}; starting from the beginning")
        return
    shutil.copytree(found, dest, dirs_exist_ok=True)
    names = sorted(p.name for p in dest.glob("checkpoint-*"))
    say(f"resume: copied {found} to {dest} ({', '.join(names)})")


# ----------------------------------------------------------------------------------------------


def job_command(src: Path, settings: dict[str, Any], working: Path, nproc: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [
        *(launcher if nproc > 1 else [sys.executable]),
        "-m",
        "job",
        "train",
        "--config",
        str(src / "config.yaml"),
        f"output.uri={working / 'runs'}",
        f"output.run_name={settings['run_name']}",
        f"train.checkpoint_dir={working / 'checkpoints'}",
    ]


def run_job(command: list[str], cwd: Path, env: dict[str, str], limit_s: float) -> tuple[int, bool]:
    """(exit status, stopped early). At the time limit, or when Kaggle stops the kernel with SIGTERM, the job gets
    SIGTERM: it saves a checkpoint after the current step and exits, and a `--resume` version continues from it."""
    job = subprocess.Popen(command, cwd=cwd, env=env)
    stopped = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopped
        stopped = True
        say("SIGTERM: stopping the job; it saves a checkpoint first")
        job.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        try:
            return job.wait(timeout=max(limit_s, 0)), stopped
        except subprocess.TimeoutExpired:
            say("time budget used up: stopping the job before Kaggle's session limit; it saves a checkpoint first")
            job.send_signal(signal.SIGTERM)
        try:
            return job.wait(timeout=STOP_GRACE_S), True
        except subprocess.TimeoutExpired:
            job.kill()
            return job.wait(), True
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_session_limit(working: Path, run_name: str, status: int) -> None:
    """What a `--resume` version will continue from, for the launcher to report."""
    names = sorted((p.name for p in (working / "checkpoints").glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
    info = {"run_name": run_name, "job_exit_status": status, "checkpoints": names}
    (working / SESSION_LIMIT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    newest = names[-1] if names else "none yet: a resumed version starts over"
    say(f"stopped before the session limit; newest checkpoint: {newest}. Push again with --resume to continue.")


def job_environment(src: Path, settings: dict[str, Any], token: str | None) -> dict[str, str]:
    """The job's environment: the unpacked source on the path, the token, and the tracking URI of the settings (its
    credential stays a Kaggle secret, which the job reads itself)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    if token:
        env["HF_TOKEN"] = token
    if settings.get("mlflow"):
        env[TRACKING_ENV] = settings["mlflow"]
    return env


def run(payload: str, settings: dict[str, Any]) -> int:
    started = time.monotonic()
    kernel = settings["kernel"]
    working = working_dir()
    say(f"{kernel}: run {settings['run_name']}, model {settings['model']}, working folder {working}")
    src = Path(tempfile.mkdtemp(prefix="dialogsum-job-"))
    unpack(payload, src)  # under a second; the token check below uses the job's own code
    sys.path.insert(0, str(src))
    token = hf_token(settings["model"], kernel)
    nproc = processes(gpu_count())
    install_requirements(src)
    working.mkdir(parents=True, exist_ok=True)
    if settings.get("resume"):
        restore_checkpoints(kernel.split("/")[1], working / "checkpoints")

    env = job_environment(src, settings, token)
    command = job_command(src, settings, working, nproc)
    say("running: " + " ".join(command[1:]))
    status, stopped = run_job(command, src, env, stop_after_s(settings) - (time.monotonic() - started))
    if stopped and not (working / "runs" / settings["run_name"] / "manifest.json").is_file():
        record_session_limit(working, settings["run_name"], status)
        return 0  # a clean end, so Kaggle keeps /kaggle/working (the checkpoints) as this version's output
    return status


def main() -> int:
    try:
        return run(PAYLOAD, SETTINGS)
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.code


# The job's source, resolved config and requirements: base64 of a tar.gz, filled in by the launcher. It comes last
# so that the code above reads first in Kaggle's viewer.
PAYLOAD = ""


if __name__ == "__main__":
    sys.exit(main())
