"""`python -m launch PLATFORM ...`: each platform module owns its own arguments."""

from __future__ import annotations

import importlib
import sys

PLATFORMS = {
    "sagemaker": ("launch.sagemaker", "run the job as a SageMaker training job (ModelTrainer)"),
    "kaggle": ("launch.kaggle", "run the job as a Kaggle GPU kernel"),
    "docker": ("launch.docker", "print or run the docker/podman command for a GPU box"),
    "image": ("launch.image", "build the job's container image and push it to ECR"),
}

USAGE = """usage: python -m launch PLATFORM [options]

Runs the same job, with the same config, on another platform.

platforms:
{platforms}

Each platform has its own --help, e.g. `python -m launch sagemaker --help`.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(platforms="\n".join(f"  {k:<10} {v[1]}" for k, v in PLATFORMS.items())))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in PLATFORMS:
        print(f"error: unknown platform {name!r}; choose one of: {', '.join(PLATFORMS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(PLATFORMS[name][0])
    return module.main(rest)
