"""The run folder: `<parent>/<run_name>`, complete once `manifest.json` (written last) exists, never written again."""

from __future__ import annotations

import hashlib
import json
import os
import platform as platform_mod
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from job import runtime
from job.config import Config
from job.errors import OutputError

MANIFEST = "manifest.json"
VERSIONED = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "datasets",
    "accelerate",
    "rouge-score",
    "dialogsum-qlora",
)


FAILURE_NOTE = "failure.txt"
"""Why an unfinished run stopped, where the job could not say it anywhere else (the watchdog); removed when the same
command resumes the run."""

BASE_MODEL = "base_model"
"""The run's own copy of a built-in model's weights (built there, since no hub holds them)."""


def weights_folder(cfg: Config) -> str:
    """`model/` for full fine-tuning (every weight changed), `adapter/` for the PEFT methods."""
    return "model" if cfg.method == "full" else "adapter"


def base_model_path(cfg: Config, run_dir: Path) -> str:
    """Where the run's base model loads from, during the run and after it (predict, merge): the run's own
    `base_model/` for a built-in model, else model.name (a hub id, at model.revision, or a local folder)."""
    from job import builtin

    if builtin.is_builtin(cfg.model.name):
        return str(run_dir / BASE_MODEL)
    channel = runtime.channel_path(cfg.model.name)
    return str(channel) if channel is not None else cfg.model.name


def public_model_name(cfg: Config) -> str:
    """The base model's name as others can find it: for weights staged in a channel (`channel:model`), the hub id
    their staged-model.json records; else model.name itself."""
    channel = runtime.channel_path(cfg.model.name)
    if channel is None:
        return cfg.model.name
    try:
        return json.loads((channel / runtime.STAGED_MODEL).read_text())["model_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return cfg.model.name


def local_parent(cfg: Config) -> Path:
    """Where the complete run folder is written: SageMaker's model folder on SageMaker; the URI itself when it is a
    local folder; `output.local_dir` (or /kaggle/working/runs on Kaggle, ./runs elsewhere) before an upload."""
    model_dir = runtime.model_dir()
    if model_dir is not None:
        return model_dir
    if not cfg.output.location.remote:
        return cfg.output.location.local_path()
    if cfg.output.local_dir:
        return Path(cfg.output.local_dir).expanduser()
    if runtime.platform() == "kaggle":
        return runtime.KAGGLE_WORKING / "runs"
    return Path("runs")


def is_complete(run_dir: Path) -> bool:
    return (run_dir / MANIFEST).is_file()


def complete_run_holding(path: Path) -> Path | None:
    """The complete run folder that is or contains `path` (links followed), if any."""
    path = path.expanduser().resolve()
    return next((folder for folder in (path, *path.parents) if is_complete(folder)), None)


def check_output_paths(option: str, target: Path, files: list[Path], overwrite: bool) -> None:
    """What a command other than `train` (predict, compare) may write: never into a complete run folder, whatever
    --overwrite says, and an existing file only with --overwrite."""
    run = complete_run_holding(target)
    if run is not None:
        raise OutputError(
            f"{option} {target} lies in the complete run folder {run} (it holds {MANIFEST}), which is never written "
            "again; write somewhere else"
        )
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        what = target if files == [target] else f"{target}: {', '.join(f.name for f in existing)}"
        verb, pronoun = ("exists", "it") if len(existing) == 1 else ("exist", "them")
        raise OutputError(f"{option} {what} {verb}; pass --overwrite to replace {pronoun}, or choose another path")


def run_path(cfg: Config) -> Path:
    """The run folder's path; a complete one is an error (checked before anything else happens)."""
    run_dir = (local_parent(cfg) / cfg.output.run_name).resolve()  # type: ignore[operator]
    if is_complete(run_dir):
        raise OutputError(
            f"run folder {run_dir} is complete (it holds {MANIFEST}) and is never written again; choose another "
            f"output.run_name or leave it unset for a fresh one"
        )
    return run_dir


def prepare(cfg: Config) -> Path:
    """Create (or reopen, to resume) the run folder; a complete one is an error, never overwritten."""
    run_dir = run_path(cfg)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
        (run_dir / FAILURE_NOTE).unlink(missing_ok=True)  # an earlier attempt's reason: this one starts over
    except OSError as e:
        raise OutputError(
            f"cannot write the run folder {run_dir}: {e.strerror or e}; check output.uri and permissions"
        ) from None
    return run_dir


def write_failure_note(run_dir: Path, reason: str) -> None:
    """`failure.txt` in an unfinished run folder: the reason it stopped, for whoever opens the folder."""
    try:
        if run_dir.is_dir() and not is_complete(run_dir):
            (run_dir / FAILURE_NOTE).write_text(reason.rstrip() + "\n", encoding="utf-8")
    except OSError:
        pass


def check_output_file(path: Path, overwrite: bool = False, option: str = "--output") -> Path:
    """An output file a command is about to write: never inside a complete run folder, never a folder, and an
    existing file only with --overwrite. Returns the resolved path."""
    path = path.expanduser().resolve()
    for folder in path.parents:
        if is_complete(folder):
            raise OutputError(
                f"{option} {path} is inside the complete run folder {folder} (it holds {MANIFEST}), which is never "
                f"written again; write it somewhere else"
            )
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {path} exists and is kept; choose another file or add --overwrite")
    return path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform_mod.python_version()}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(run_dir: Path, cfg: Config, started_at: str, extra: dict[str, Any] | None = None) -> Path:
    """List every file with size and sha256, then write manifest.json: the run is complete from this moment."""
    files = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            files.append(
                {"path": path.relative_to(run_dir).as_posix(), "size": path.stat().st_size, "sha256": sha256(path)}
            )
    manifest = {
        "run_name": run_dir.name,
        "config_hash": cfg.hash(),
        "seed": cfg.train.seed,
        "started_at": started_at,
        "finished_at": now(),
        "platform": runtime.platform(),
        "versions": versions(),
        "files": files,
        **(extra or {}),
    }
    write_json(run_dir / MANIFEST, manifest)
    return run_dir / MANIFEST


def verify(run_dir: Path) -> list[str]:
    """Problems with a run folder against its manifest (empty when intact)."""
    if not is_complete(run_dir):
        return [f"{run_dir} has no {MANIFEST}: the run did not finish"]
    manifest = json.loads((run_dir / MANIFEST).read_text())
    problems = []
    for entry in manifest["files"]:
        path = run_dir / entry["path"]
        if not path.is_file():
            problems.append(f"missing {entry['path']}")
        elif path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]:
            problems.append(f"changed {entry['path']}")
    return problems
