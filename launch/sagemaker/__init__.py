"""`python -m launch sagemaker`: the job as a SageMaker training job (cli), its request (request), following it
(follow). Imports no torch."""

from launch.sagemaker.cli import main

__all__ = ["main"]
