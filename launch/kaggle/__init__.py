"""`python -m launch kaggle`: the job as a Kaggle GPU kernel. `cli` (the command line), `kernel_folder` (what is
pushed), `client` (what is asked of Kaggle), `kernel` (the kernel's own code file, which runs on Kaggle)."""

from launch.kaggle.cli import main

__all__ = ["main"]
