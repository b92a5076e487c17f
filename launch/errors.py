"""Errors the launchers report as lines on stderr and an exit code per class, never as a traceback.

`launch/cli.py` turns each into `error: <line>` and its exit code, once for every platform. The codes are the ones
users have always seen: SageMaker exits 1 for anything AWS refused (its credentials included) and 2 for bad input;
Kaggle splits the platform's refusals (3) from missing credentials (4); `launch image` exits 1 for a failed step.
"""

from __future__ import annotations


class LaunchError(Exception):
    """A failure the user can fix: each line says what is wrong and how to fix it. The platform refused a request,
    or the run failed or has not finished: exit 1."""

    exit_code = 1

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class BadInput(LaunchError):
    """An option, the config or a name is wrong, found before anything was sent: one line per problem."""

    exit_code = 2


class PlatformRefused(LaunchError):
    """Kaggle refused the request or could not be reached."""

    exit_code = 3


class NoCredentials(LaunchError):
    """Kaggle has no usable credentials."""

    exit_code = 4


class Resumable(LaunchError):
    """The run stopped before the platform's session limit and can be continued (EX_TEMPFAIL)."""

    exit_code = 75


class Interrupted(LaunchError):
    """Ctrl-C while following: the run goes on on the platform (128 + SIGINT)."""

    exit_code = 130
