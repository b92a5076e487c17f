"""The data report (`python -m job data`) in a launcher's --dry-run, where it can be made here.

It needs the model's tokenizer and the data on this machine: a built-in or local model or one already in the
local Hugging Face cache, and a built-in, local or cached data set. It runs as `python -m job data` in a
subprocess, offline, so the launcher itself still imports no torch or transformers; where it cannot be made, one
line says why and what to run where it can.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from job.config import Config

TIMEOUT_S = 300


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def _is_local(spec: str) -> bool:
    return not spec.startswith(("builtin:", "channel:")) and Path(spec).expanduser().exists()


def missing_here(cfg: Config) -> str | None:
    """What keeps the report from being made on this machine (None: it can be)."""
    model, data = cfg.model.name, cfg.data.dataset
    if not (model.startswith("builtin:") or _is_local(model)):
        if not (_hub_cache() / f"models--{model.replace('/', '--')}").is_dir():
            return f"the tokenizer of {model} is not in the local Hugging Face cache"
    if data.startswith("channel:"):
        return f"data.dataset={data} is a SageMaker channel"
    if not (data.startswith("builtin:") or _is_local(data)):
        if not (_hub_cache() / f"datasets--{data.replace('/', '--')}").is_dir():
            return f"data.dataset={data} is not on this machine nor in the local Hugging Face cache"
    return None


def report_lines(cfg: Config) -> list[str]:
    """The data report's lines, or one line saying why it is not shown."""
    why = missing_here(cfg)
    if why is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(cfg.to_yaml(), encoding="utf-8")
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "job", "data", "--config", str(path)],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                proc = None
        if proc is not None and proc.returncode == 0:
            return proc.stdout.rstrip().splitlines()
        errors = [line for line in (proc.stderr if proc else "").splitlines() if line.startswith("error")]
        why = (
            errors[-1] if errors else (f"it took over {TIMEOUT_S} s" if proc is None else "`python -m job data` failed")
        )
    return [f"data report: not made here ({why}); run `python -m job data` with this config where it can be"]
