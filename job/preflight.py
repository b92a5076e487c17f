"""Checks before the first GPU second: access to the model, where results go, disk, GPU and memory fit."""

from __future__ import annotations

from job import secrets
from job.config import Config


def check(cfg: Config, token: str | None) -> None:
    """Raise a JobError (one line: what and how to fix) for the first class of problem found."""
    secrets.check_model_access(cfg.model.name, token, cfg.model.revision)
