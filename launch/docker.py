"""`python -m launch docker COMMAND [--config NAME] [overrides]`: the docker (or podman) command that runs the job's
image on this machine's GPU, printed, or run with `--run`.

The command mounts the run folder at /runs and the Hugging Face cache at the image's HF_HOME, runs as the calling
user so the run's files are yours, and hands the Hugging Face token over by reference only: `-e HF_TOKEN` (the
engine copies the value from its own environment) or a file mounted at /run/secrets/hf_token, where the job
looks for it. The token's value never appears in the command, the image or its history.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from job import config as config_mod
from launch import cli as launch_cli
from launch import tracking as launch_tracking
from launch.errors import BadInput
from launch.image import ENGINES, ImageError, choose_engine, default_tag

RUNS_IN_CONTAINER = "/runs"
HF_HOME_IN_CONTAINER = "/cache/huggingface"
TOKEN_IN_CONTAINER = "/run/secrets/hf_token"
INPUTS_IN_CONTAINER = "/inputs"
JOB_COMMANDS = ("train", "serve")
"""The job commands whose paths this launcher maps into the container (predict and publish: run the image by hand)."""
MODEL_IN_CONTAINER = "/opt/ml/model"
"""Where `serve` reads a run from by default, as on SageMaker: a local run folder is mounted there read-only."""
SERVE_PORT = 8080
AWS_VARIABLES = ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_DEFAULT_REGION")  # fmt: skip
"""Passed by name (never by value) to `serve` an s3:// run."""
PATH_KEYS = ("data.dataset", "model.name")
"""Overrides whose value may be a file or folder on this machine: mounted read-only so the job finds it."""

EPILOG = """examples:
  python -m launch docker train --config llama-3.2-3b-qlora                 # print the command
  python -m launch docker train --config llama-3.2-3b-qlora --run           # and run it
  python -m launch docker train --config smoke --cpu --run                  # CPU smoke test, no GPU needed
  python -m launch docker train --config my.yaml data.dataset=dialogues.jsonl --hf-token-file ~/.hf_token
  python -m launch docker serve runs/RUN --run                              # http://127.0.0.1:8080
  python -m launch docker serve s3://my-bucket/runs/RUN --port 9000

The Hugging Face token: set HF_TOKEN in your environment (passed as `-e HF_TOKEN`, by name) or give
--hf-token-file (mounted read-only at /run/secrets/hf_token). Runs land in --runs (default ./runs).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch docker",
        description="Print (or run with --run) the docker/podman command that runs the job's image on a GPU box.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        allow_abbrev=False,
    )
    p.add_argument("command", choices=JOB_COMMANDS, help="the job's command")
    p.add_argument("--config", help="preset name or YAML path (a path is mounted into the container)")
    p.add_argument("--image", default=default_tag(), help="image to run (default: %(default)s)")
    p.add_argument("--engine", choices=ENGINES, help="default: docker when its daemon answers, else podman")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="run folders on this machine (default: ./runs)")
    p.add_argument(
        "--hf-cache",
        type=Path,
        default=Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")),
        help="Hugging Face cache to share with the container (default: $HF_HOME or ~/.cache/huggingface)",
    )
    p.add_argument("--hf-token-file", type=Path, help="file holding the Hugging Face token (mounted read-only)")
    p.add_argument("--cpu", action="store_true", help="no GPU flags (CPU smoke tests)")
    p.add_argument(
        "--gpus",
        type=gpu_count,
        default="all",
        help="GPUs to give the job: `all` (default) or a count N; with several, the job runs under torchrun with "
        "one process per GPU (DDP, or FSDP with train.fsdp=true)",
    )
    p.add_argument("--as-root", action="store_true", help="run as the image's root user instead of yours")
    p.add_argument("--port", type=int, default=SERVE_PORT, help="serve: the port on 127.0.0.1 for the container's 8080")
    p.add_argument("--run", action="store_true", help="run the command instead of only printing it")
    launch_tracking.add_option(p)
    return p


def split_job_args(rest: list[str]) -> list[str]:
    """The job's overrides as given; launcher options never reach here (argparse took them)."""
    return [a for a in rest if a != "--"]


def override_value(job_args: list[str], key: str) -> str | None:
    """The value of `key=value` or `--key value` among the job's overrides (last one wins, as in the job)."""
    value = None
    for i, arg in enumerate(job_args):
        if arg.startswith(f"{key}=") or arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{key}" and i + 1 < len(job_args):
            value = job_args[i + 1]
    return value


def replace_override(job_args: list[str], key: str, value: str) -> list[str]:
    """The overrides with every occurrence of `key` set to `value` (forms kept)."""
    out, skip = [], False
    for i, arg in enumerate(job_args):
        if skip:
            skip = False
            continue
        if arg.startswith(f"{key}=") or arg.startswith(f"--{key}="):
            out.append(arg.split("=", 1)[0] + "=" + value)
        elif arg == f"--{key}" and i + 1 < len(job_args):
            out += [arg, value]
            skip = True
        else:
            out.append(arg)
    return out


def validate_config(config: str | None, job_args: list[str]) -> None:
    """Resolve the config here, before any container starts, so mistakes cost nothing."""
    try:
        config_mod.resolve(config, job_args, {})
    except config_mod.ConfigError as e:
        raise BadInput(str(e)) from None


def is_local_path(value: str) -> bool:
    return "://" not in value and not value.startswith(("builtin:", "channel:")) and Path(value).expanduser().exists()


def mount_inputs(config: str | None, job_args: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Mounts for a config file and local data/model paths; returns (volume flags, config arg, job args)."""
    volumes: list[str] = []
    if config and Path(config).suffix and Path(config).is_file():
        host = Path(config).expanduser().resolve()
        inside = f"{INPUTS_IN_CONTAINER}/config/{host.name}"
        volumes += ["-v", f"{host}:{inside}:ro"]
        config = inside
    for key in PATH_KEYS:
        value = override_value(job_args, key)
        if value and is_local_path(value):
            host = Path(value).expanduser().resolve()
            inside = f"{INPUTS_IN_CONTAINER}/{key.split('.')[0]}/{host.name}"
            volumes += ["-v", f"{host}:{inside}:ro"]
            job_args = replace_override(job_args, key, inside)
    return volumes, config, job_args


def output_args(job_args: list[str]) -> list[str]:
    """Runs go to the mounted /runs. A remote output.uri (s3://, hf://) keeps its local copy there too."""
    uri = override_value(job_args, "output.uri")
    if uri is None:
        return job_args + [f"output.uri={RUNS_IN_CONTAINER}"]
    if "://" not in uri:
        raise BadInput(
            f"output.uri={uri} is a path inside the container: choose the folder on this machine with --runs"
        )
    if override_value(job_args, "output.local_dir") is None:
        return job_args + [f"output.local_dir={RUNS_IN_CONTAINER}"]
    return job_args


def token_args(token_file: Path | None) -> list[str]:
    """The token by reference: a mounted file, or the variable's name (never its value)."""
    if token_file is not None:
        path = token_file.expanduser().resolve()
        if not path.is_file():
            raise BadInput(f"--hf-token-file {token_file}: no such file (write the token into it, one line)")
        return ["-v", f"{path}:{TOKEN_IN_CONTAINER}:ro"]
    if os.environ.get("HF_TOKEN"):
        return ["-e", "HF_TOKEN"]
    return []


def tracking_args(args: argparse.Namespace) -> list[str]:
    """`--mlflow` as the job's MLFLOW_TRACKING_URI; a credential set here goes by name only (`-e NAME`)."""
    if problems := launch_tracking.problems(args):
        raise BadInput(*problems)
    uri = launch_tracking.uri_of(args)
    if uri is None:
        return []
    return ["-e", f"{launch_tracking.job_tracking.URI_ENV}={uri}"] + [
        arg for name in launch_tracking.credential_names() for arg in ("-e", name)
    ]


def gpu_count(text: str) -> str:
    if text == "all" or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"--gpus takes `all` or a count >= 1, got {text!r}")


def gpu_args(engine: str, gpus: str = "all") -> list[str]:
    """docker's NVIDIA runtime flag; podman uses the Container Device Interface (nvidia-ctk cdi generate)."""
    if engine == "docker":
        return ["--gpus", gpus]
    if gpus == "all":
        return ["--device", "nvidia.com/gpu=all"]
    return [arg for i in range(int(gpus)) for arg in ("--device", f"nvidia.com/gpu={i}")]


def under_torchrun(gpus: str, cpu: bool) -> bool:
    """Several GPUs run one process per GPU under torchrun (a single process must never wrap a 4-bit model in
    DataParallel). `all` keeps one process: the count is unknown until the container runs."""
    return not cpu and gpus != "all" and int(gpus) > 1


def job_launcher(gpus: str, cpu: bool) -> list[str]:
    """The entrypoint override that lets torchrun start the job."""
    return ["--entrypoint", "/opt/venv/bin/python"] if under_torchrun(gpus, cpu) else []


def torchrun_prefix(gpus: str, cpu: bool) -> list[str]:
    if not under_torchrun(gpus, cpu):
        return []
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m", "job"]


def serve_command(args: argparse.Namespace, job_args: list[str], engine: str) -> list[str]:
    """`docker run ... IMAGE serve`: a local run folder mounted at /opt/ml/model as SageMaker mounts it, or an
    s3:// / hf:// run passed on as --run; the server published on 127.0.0.1 only."""
    if not job_args:
        raise BadInput("serve needs the run: python -m launch docker serve RUN (a run folder, s3://... or hf://...)")
    source, extra = job_args[0], job_args[1:]
    if not 1 <= args.port <= 65535:
        raise BadInput(f"--port {args.port}: must be 1-65535")
    cache = args.hf_cache.expanduser().resolve()
    cmd = [engine, "run", "--rm"]
    if not args.cpu:
        cmd += gpu_args(engine, args.gpus)
    cmd += ["-p", f"127.0.0.1:{args.port}:{SERVE_PORT}", "-v", f"{cache}:{HF_HOME_IN_CONTAINER}"]
    if "://" in source:
        cmd += [arg for name in AWS_VARIABLES if os.environ.get(name) for arg in ("-e", name)]
        run_args = ["--run", source]
    else:
        folder = Path(source).expanduser().resolve()
        if not (folder / "manifest.json").is_file():
            raise BadInput(
                f"{source} is not a finished run folder (no manifest.json); pass the folder of a finished run"
            )
        cmd += ["-v", f"{folder}:{MODEL_IN_CONTAINER}:ro"]
        run_args = []
    cmd += token_args(args.hf_token_file)
    return cmd + [args.image, "serve", *run_args, *extra]


def run_command(args: argparse.Namespace, job_args: list[str], engine: str) -> list[str]:
    """The full engine command for the parsed options."""
    volumes, config, job_args = mount_inputs(args.config, job_args)
    job_args = output_args(job_args)
    runs = args.runs.expanduser().resolve()
    cache = args.hf_cache.expanduser().resolve()
    cmd = [engine, "run", "--rm"]
    if not args.cpu:
        cmd += gpu_args(engine, args.gpus)
    cmd += job_launcher(args.gpus, args.cpu)
    if not args.as_root and hasattr(os, "getuid"):
        cmd += ["--user", f"{os.getuid()}:{os.getgid()}"]
    # PyTorch's data loader workers share tensors through /dev/shm, which engines cap at 64 MB by default.
    cmd += ["--shm-size", "8g"]
    cmd += ["-v", f"{runs}:{RUNS_IN_CONTAINER}", "-v", f"{cache}:{HF_HOME_IN_CONTAINER}"]
    cmd += volumes + token_args(args.hf_token_file) + tracking_args(args)
    cmd += [args.image, *torchrun_prefix(args.gpus, args.cpu), args.command]
    cmd += (["--config", config] if config else []) + job_args
    return cmd


def main(argv: list[str] | None = None) -> int:
    return launch_cli.execute(run, sys.argv[1:] if argv is None else argv)


def run(argv: list[str]) -> int:
    args, rest = parser().parse_known_args(argv)
    job_args = split_job_args(rest)
    if args.command == "train":
        validate_config(args.config, job_args)
    try:
        engine = choose_engine(args.engine, must_work=args.run)
    except ImageError as e:  # no engine: nothing ran, so bad input here (exit 2), as `launch image` reports it (1)
        raise BadInput(*e.lines) from None
    cmd = serve_command(args, job_args, engine) if args.command == "serve" else run_command(args, job_args, engine)
    print(shlex.join(cmd))
    if not args.run:
        return 0
    # The host folders must exist and belong to the caller, or the engine creates them as root.
    if args.command == "train":
        args.runs.expanduser().mkdir(parents=True, exist_ok=True)
    args.hf_cache.expanduser().mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
