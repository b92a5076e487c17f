"""Errors the job reports as one clear line and an exit code per class, never as a traceback."""

from __future__ import annotations


class JobError(Exception):
    """A failure the user can fix: `str(e)` says what is wrong and how to fix it."""

    exit_code = 1
    kind = "error"


class ConfigInputError(JobError):
    exit_code = 2
    kind = "config"


class DataError(JobError):
    exit_code = 3
    kind = "data"


class AuthError(JobError):
    exit_code = 4
    kind = "auth"


class OutputError(JobError):
    exit_code = 5
    kind = "output"


class ResourceError(JobError):
    exit_code = 6
    kind = "resources"


class TrainingError(JobError):
    exit_code = 7
    kind = "training"


class PublishError(JobError):
    exit_code = 8
    kind = "publish"


class Stalled(JobError):
    """No optimizer step and no generated batch for train.stall_minutes (a hung collective, a stuck generation): the
    watchdog (job/watchdog.py) ended the process so that it stops billing."""

    exit_code = 9
    kind = "stalled"


class Interrupted(JobError):
    """Stopped by SIGTERM (spot reclaim, StopTrainingJob, docker stop) after saving a checkpoint: 128 + SIGTERM."""

    exit_code = 143
    kind = "interrupted"
