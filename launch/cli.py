"""`python -m launch PLATFORM ...`: each platform module owns its own arguments; errors end here, as one line each."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from launch.errors import BadInput, Interrupted, LaunchError

PLATFORMS = {
    "sagemaker": ("launch.sagemaker.cli", "run the job as a SageMaker training job (ModelTrainer)"),
    "kaggle": ("launch.kaggle.cli", "run the job as a Kaggle GPU kernel"),
    "docker": ("launch.docker", "print or run the docker/podman command for a GPU box"),
    "image": ("launch.image", "build the job's container image and push it to ECR"),
}

USAGE = """usage: python -m launch PLATFORM [options]

Runs the same job, with the same config, on another platform.

platforms:
{platforms}

Each platform has its own --help, e.g. `python -m launch sagemaker --help`.
"""


def report(e: LaunchError) -> int:
    """One line on stderr per problem instead of a traceback; the exit code of its class."""
    prefix = "" if isinstance(e, Interrupted) else "error: "
    for line in e.lines:
        print(f"{prefix}{line}", file=sys.stderr)
    return e.exit_code


def execute(run: Callable[[list[str]], int], argv: list[str]) -> int:
    """A platform's `run(argv)`, its LaunchError reported: the one place launcher errors become exit codes."""
    try:
        return run(argv)
    except LaunchError as e:
        return report(e)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(platforms="\n".join(f"  {k:<10} {v[1]}" for k, v in PLATFORMS.items())))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in PLATFORMS:
        return report(BadInput(f"unknown platform {name!r}; choose one of: {', '.join(PLATFORMS)}"))
    module = importlib.import_module(PLATFORMS[name][0])
    return execute(module.run, rest)
