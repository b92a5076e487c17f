"""`python -m launch kaggle`: the job as a Kaggle GPU kernel (cli); `kernel.py` is the kernel's own code file."""

from launch.kaggle.cli import main

__all__ = ["main"]
