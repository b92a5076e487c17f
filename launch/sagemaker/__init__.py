"""`python -m launch sagemaker`: the job as a SageMaker training job. `cli` (the command line), `checks` (what is
checked before anything is sent), `request` (the plan, the request and ModelTrainer), `follow` (what is asked of AWS
besides submitting: quota, secret, uploads, status, logs, fetch, stop); serving a finished run: `serving_cli` (deploy,
invoke, endpoints, delete, transform), `serving` (the run folder, the model, timeouts, checks), `endpoint`,
`transform`. Imports no torch."""

from launch.sagemaker.cli import main

__all__ = ["main"]
