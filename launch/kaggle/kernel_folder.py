"""The Kaggle kernel's folder: `kernel-metadata.json` and one code file, `launch/kaggle/kernel.py` with the job's
source, the resolved config and the requirements packed inside (Kaggle uploads nothing else); and what a version
is estimated to need (hours, output size) before it is pushed. No network."""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import math
import re
import sys
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from job import config as config_mod
from job import memory, runtime
from launch import catalog
from launch.errors import BadInput

KERNEL_TEMPLATE = Path(__file__).with_name("kernel.py")
CODE_FILE = "dialogsum_kernel.py"
JOB_PACKAGE = Path(config_mod.__file__).parent
PYPROJECT = JOB_PACKAGE.parent / "pyproject.toml"

# Kaggle's limits (kaggle.com/docs/notebooks, Nov 2026).
SESSION_HOURS = 12.0
OUTPUT_LIMIT_GB = 20.0
STARTUP_HOURS = 0.15  # image start, pip install of the job's requirements, model download
# The kernel stops the job this long after it starts: the session's clock starts earlier (machine start), and the
# job needs time to write its checkpoint and Kaggle to save the output.
STOP_AFTER_S = (SESSION_HOURS - 0.5) * 3600

# Machine shapes the SaveKernel API takes -> (GPU in launch.catalog, GPUs). P100 is retired: Kaggle runs T4 x2 instead.
SHAPES: dict[str, tuple[str, int]] = {"NvidiaTeslaT4": ("T4", 2), "NvidiaTeslaP100": ("T4", 2)}
DEFAULT_SHAPE = "NvidiaTeslaT4"

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{3,48}[a-z0-9]")
OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


# ----------------------------------------------------------------------------------------------
# The kernel folder: kernel-metadata.json and one code file


@dataclass(frozen=True)
class Kernel:
    owner: str
    slug: str

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def url(self) -> str:
        return f"https://www.kaggle.com/code/{self.ref}"


def parse_kernel(text: str) -> tuple[Kernel, int | None]:
    """`owner/slug` or `owner/slug/N` into (kernel, version)."""
    parts = text.strip().strip("/").split("/")
    version: int | None = None
    if len(parts) == 3 and parts[2].lstrip("v").isdigit():
        version = int(parts[2].lstrip("v"))
        parts = parts[:2]
    if len(parts) != 2 or not OWNER.fullmatch(parts[0]):
        raise BadInput(
            f"kernel {text!r} must look like OWNER/SLUG or OWNER/SLUG/VERSION (e.g. alice/dialogsum-qlora/3)"
        )
    check_slug(parts[1])
    return Kernel(parts[0], parts[1]), version


def check_slug(slug: str) -> None:
    if not SLUG.fullmatch(slug) or "--" in slug:
        raise BadInput(
            f"kernel slug {slug!r} must be 5-50 lowercase letters, digits and single hyphens (e.g. dialogsum-qlora)"
        )


def default_slug(config_name: str) -> str:
    """`dialogsum-<preset or file stem>`, cut to Kaggle's 50 characters."""
    stem = config_name if config_name in config_mod.presets() else Path(config_name).stem
    words = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    return f"dialogsum-{words}"[:50].rstrip("-")


def title_for(slug: str) -> str:
    """A title that Kaggle slugifies back to the slug (it is the slug with spaces), so the id and title agree."""
    return slug.replace("-", " ").capitalize()


def for_kaggle(cfg: config_mod.Config, kernel: Kernel) -> config_mod.Config:
    """The config as the kernel runs it: run folder and checkpoints under /kaggle/working, and a run name that is
    stable for a config, so every version of a `--resume` chain continues the same run."""
    out = copy.deepcopy(cfg)
    out.output.uri = str(runtime.KAGGLE_WORKING / "runs")
    out.train.checkpoint_dir = str(runtime.KAGGLE_WORKING / "checkpoints")
    out.output.run_name = cfg.output.run_name or f"{kernel.slug}-{out.hash()}"
    return out


def metadata_for(kernel: Kernel, shape: str, public: bool, resume: bool) -> dict[str, Any]:
    return {
        "id": kernel.ref,
        "title": title_for(kernel.slug),
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": not public,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": True,  # pip and the Hub; the client's default is true too, but the docs say false
        "machine_shape": shape,
        "dataset_sources": [],
        "competition_sources": [],
        "kernel_sources": [kernel.ref] if resume else [],  # the previous version's output, with its checkpoints
        "model_sources": [],
        "keywords": [],
    }


def job_requirements() -> list[str]:
    """The job's requirements (the base dependencies and the `job` extra) minus torch: Kaggle's CUDA build stays."""
    if PYPROJECT.is_file() and sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
        wanted = [*project["dependencies"], *project["optional-dependencies"]["job"]]
    else:  # installed from a wheel: the same lists, from the package metadata
        marker = re.compile(r";\s*extra\s*==\s*['\"]job['\"]\s*$")
        wanted = [
            marker.sub("", r) for r in metadata.requires("dialogsum-qlora") or [] if ";" not in r or marker.search(r)
        ]
    return [r for r in wanted if re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() != "torch"]


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644  # mtime 0: the same config gives the same code file
    archive.addfile(info, io.BytesIO(data))


def payload(cfg: config_mod.Config) -> str:
    """base64 of a tar.gz holding job/ (source, presets, built-in data), config.yaml and requirements.txt."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for path in sorted(JOB_PACKAGE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                _add(archive, "job/" + path.relative_to(JOB_PACKAGE).as_posix(), path.read_bytes())
        _add(archive, "config.yaml", cfg.to_yaml().encode())
        _add(archive, "requirements.txt", ("\n".join(job_requirements()) + "\n").encode())
    return base64.b64encode(gzip.compress(raw.getvalue(), mtime=0)).decode()


def wrapped(text: str, width: int = 100) -> str:
    """Short lines for Kaggle's source viewer; base64 decoding skips the newlines."""
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def code_file(cfg: config_mod.Config, settings: dict[str, Any]) -> str:
    """The kernel template with PAYLOAD and SETTINGS filled in."""
    text = KERNEL_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (
        ('PAYLOAD = ""', f'PAYLOAD = """\n{wrapped(payload(cfg))}\n"""'),
        (
            "SETTINGS: dict[str, Any] = {}  # filled in by the launcher: kernel, run_name, model, resume, stop_after_s",
            f"SETTINGS: dict[str, Any] = {dict(sorted(settings.items()))!r}",
        ),
    ):
        if text.count(placeholder) != 1:
            raise RuntimeError(f"{KERNEL_TEMPLATE.name} lost its placeholder line {placeholder!r}")
        text = text.replace(placeholder, value)
    kernel, run = settings["kernel"], settings["run_name"]
    return f"# Generated by `python -m launch kaggle` for {kernel}: the dialogsum-qlora job, run {run}.\n" + text


def write_kernel_folder(
    folder: Path,
    cfg: config_mod.Config,
    kernel: Kernel,
    shape: str,
    public: bool,
    resume: bool,
    mlflow: str | None = None,
) -> dict[str, Any]:
    """`mlflow`: the tracking URI the kernel hands the job (`MLFLOW_TRACKING_URI`); its credential, if any, is a
    Kaggle secret the job reads itself."""
    meta = metadata_for(kernel, shape, public, resume)
    settings = {
        "kernel": kernel.ref,
        "run_name": cfg.output.run_name,
        "model": cfg.model.name,
        "resume": resume,
        "stop_after_s": STOP_AFTER_S,
        **({"mlflow": mlflow} if mlflow else {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (folder / CODE_FILE).write_text(code_file(cfg, settings), encoding="utf-8")
    return meta


# ----------------------------------------------------------------------------------------------
# Validation: hours, output size, weekly quota


def gpus(shape: str) -> tuple[str, int]:
    """(GPU model, count) of a machine shape; unknown shapes are estimated as Kaggle's default, T4 x2."""
    return SHAPES.get(shape, SHAPES[DEFAULT_SHAPE])


def estimate_hours(cfg: config_mod.Config, shape: str = DEFAULT_SHAPE) -> float:
    """Hours of one kernel version: the job runs under torchrun with one process per GPU."""
    gpu, count = gpus(shape)
    return catalog.estimate_train_hours(cfg, gpu=gpu, count=count) + STARTUP_HOURS


def hours_warning(cfg: config_mod.Config, hours: float, shape: str = DEFAULT_SHAPE) -> str | None:
    """Over Kaggle's 12-hour session: how many `--resume` versions it takes, or how many steps fit one session."""
    if hours <= SESSION_HOURS:
        return None
    gpu, count = gpus(shape)
    work = catalog.estimate_hours(cfg, gpu, count)
    budget = SESSION_HOURS * 0.9 - STARTUP_HOURS - work["generation_hours"] - work["validation_hours"]
    steps = max(1, int(work["steps"] * budget / work["train_hours"])) if work["train_hours"] > 0 else None
    sessions = math.ceil(hours / (SESSION_HOURS * 0.9))
    fewer = f", or fewer steps (train.max_steps={steps} fits one session)" if steps else ""
    return (
        f"~{hours:.1f} h on {count}x {gpu} is more than a Kaggle session's {SESSION_HOURS:.0f} h: the kernel stops at "
        f"{SESSION_HOURS:.0f} h with its checkpoints saved; continue it with `--resume` (~{sessions} versions){fewer}"
    )


def estimate_output_gb(cfg: config_mod.Config) -> float | None:
    """What the kernel leaves in /kaggle/working: adapter, checkpoints (adapter + AdamW state), a merged model."""
    try:
        arch = memory.architecture(cfg.model.name)
    except memory.UnknownArchitecture:
        return None
    lora = memory.lora_parameters(arch, cfg.lora.r, cfg.lora.target_modules)
    adapter = 4 * lora  # fp32 LoRA weights
    checkpoint = adapter + 8 * lora  # plus AdamW's two fp32 moments
    kept = cfg.train.save_total_limit + (1 if cfg.train.best_by_eval_loss else 0)
    merged = 2 * memory.parameter_counts(arch)["total"] if cfg.output.merge else 0
    return (adapter + kept * checkpoint + merged) / 1e9


def output_warning(gb: float | None) -> str | None:
    if gb is None or gb <= OUTPUT_LIMIT_GB * 0.9:
        return None
    return (
        f"the run leaves ~{gb:.1f} GB in /kaggle/working, near or over Kaggle's {OUTPUT_LIMIT_GB:.0f} GB output limit: "
        "set output.merge=false (merge after fetching) or lower train.save_total_limit"
    )
