"""`python -m launch kaggle`: the job as a Kaggle GPU kernel, pushed, followed, resumed and fetched.

The kernel is one code file (Kaggle uploads nothing else): `launch/kaggle_kernel.py` with the job's source, the
resolved config and the requirements packed inside. The `kaggle` client is imported only where it is used, because
importing it authenticates.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import hashlib
import io
import json
import math
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from job import config as config_mod
from job import memory, runtime, tables
from launch import catalog, datareport
from launch.kaggle_kernel import SESSION_LIMIT_FILE

KERNEL_TEMPLATE = Path(__file__).with_name("kaggle_kernel.py")
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

EXIT_RESUME = 75  # EX_TEMPFAIL: the version stopped before the session limit; a --resume version continues it
TERMINAL = {"COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"}
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{3,48}[a-z0-9]")
OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class LaunchError(Exception):
    """One line saying what is wrong and how to fix it; `code` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


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
        raise LaunchError(
            f"kernel {text!r} must look like OWNER/SLUG or OWNER/SLUG/VERSION (e.g. alice/dialogsum-qlora/3)"
        )
    check_slug(parts[1])
    return Kernel(parts[0], parts[1]), version


def check_slug(slug: str) -> None:
    if not SLUG.fullmatch(slug) or "--" in slug:
        raise LaunchError(
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
    folder: Path, cfg: config_mod.Config, kernel: Kernel, shape: str, public: bool, resume: bool
) -> dict[str, Any]:
    meta = metadata_for(kernel, shape, public, resume)
    settings = {
        "kernel": kernel.ref,
        "run_name": cfg.output.run_name,
        "model": cfg.model.name,
        "resume": resume,
        "stop_after_s": STOP_AFTER_S,
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


def quota_line(api: Any, hours: float) -> str:
    """The weekly GPU quota left, where the API answers; a warning when the run needs more."""
    try:
        quota = api.quota_view().gpu_quota
    except Exception as e:  # noqa: BLE001  the quota is advice: a failure to read it never stops a push
        return f"weekly GPU quota: unknown ({e.__class__.__name__})"
    if quota is None or quota.total_time_allowed is None:
        return "weekly GPU quota: unknown (not in Kaggle's answer)"
    used = (quota.time_used or timedelta()) + (quota.time_reserved or timedelta())
    left = (quota.total_time_allowed - used).total_seconds() / 3600
    line = f"weekly GPU quota: {left:.1f} h left of {quota.total_time_allowed.total_seconds() / 3600:.0f} h"
    if hours > left:
        line += f"; WARNING: this run needs ~{hours:.1f} h, it will stop when the quota runs out"
    return line


# ----------------------------------------------------------------------------------------------
# The Kaggle client


def connect() -> Any:
    """An authenticated KaggleApi. Importing `kaggle` authenticates, so it happens here and nowhere at import time."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client prints its own help, then exits
        raise LaunchError(
            "no usable Kaggle credentials (none found, or the token was refused): create an API token at https://www.kaggle.com/settings (API > Create New Token) "
            "and save it to ~/.kaggle/access_token or set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY)",
            4,
        ) from None
    return api


def offline_username() -> str | None:
    """The username from KAGGLE_USERNAME or kaggle.json, without the network (for --dry-run)."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    homes = [
        os.environ.get("KAGGLE_CONFIG_DIR"),
        "~/.kaggle",
        os.environ.get("XDG_CONFIG_HOME", "~/.config") + "/kaggle",
    ]
    for home in filter(None, homes):
        path = Path(home).expanduser() / "kaggle.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("username")
        except (OSError, ValueError):
            continue
    return None


def api_error(e: Exception, doing: str) -> LaunchError:
    """A client or HTTP failure as one line (the client's messages carry no credentials)."""
    import requests

    if isinstance(e, requests.HTTPError) and e.response is not None:
        status = e.response.status_code
        hint = {
            401: "Kaggle rejected the credentials: create a new API token at https://www.kaggle.com/settings",
            403: "not allowed: check the kernel's owner, and that GPU and internet are enabled for your account "
            "(they need a phone-verified account)",
            404: "not found: check OWNER/SLUG (and the version number)",
            429: "Kaggle is rate-limiting this account: wait a minute and try again",
        }.get(status, str(e) or "unexpected answer")
        return LaunchError(f"{doing}: HTTP {status}: {hint}", 3)
    if isinstance(e, requests.RequestException):
        return LaunchError(f"{doing}: cannot reach Kaggle ({e.__class__.__name__}); check the network", 3)
    return LaunchError(f"{doing}: {e}", 2)


# What a source Kaggle could not attach means for the version, which is saved and runs without it.
SOURCE_FIELDS = {
    "invalid_kernel_sources": "kernel source",
    "invalid_dataset_sources": "dataset source",
    "invalid_model_sources": "model source",
    "invalid_competition_sources": "competition source",
    "invalid_tags": "keyword",
}


def push(api: Any, folder: Path, kernel: Kernel, resume: bool) -> tuple[str, int | None, list[str]]:
    """kernels_push -> (url, version, warnings). The client does not raise on a server-side refusal: `error` set means
    nothing was saved. The `invalid_*` lists come with a version that was saved and runs without those sources (the
    client itself only prints them), so each becomes a warning saying what the version lacks."""
    try:
        response = api.kernels_push(str(folder))
    except Exception as e:  # noqa: BLE001
        raise api_error(e, "pushing the kernel") from None
    if response.error:
        message = f"Kaggle refused the push: {response.error}"
        if "phone" in message.lower():
            message += " (verify your phone at https://www.kaggle.com/settings)"
        raise LaunchError(message, 3)
    where = f"version {response.version_number}" if response.version_number else "the new version"
    warnings = []
    for field, what in SOURCE_FIELDS.items():
        for bad in getattr(response, field, None) or []:
            if resume and field == "invalid_kernel_sources" and bad == kernel.ref:
                meaning = (
                    "the previous version's checkpoints are not mounted, so it starts the run from the beginning "
                    "and spends GPU quota on steps already done"
                )
            else:
                meaning = "it runs without it"
            warnings.append(f"Kaggle did not attach the {what} {bad} to {where}: {meaning}")
    return response.url, response.version_number, warnings


def check_resumable(api: Any, kernel: Kernel) -> None:
    """A `--resume` version mounts the output of the kernel's newest version: refuse, before anything is pushed, when
    that version has not ended COMPLETE or left no checkpoints, since the new version would start over."""
    import requests

    command = f"python -m launch kaggle status {kernel.ref} --wait"
    try:
        status, failure = session_status(api, kernel, None)
    except Exception as e:  # noqa: BLE001
        if isinstance(e, requests.HTTPError) and e.response is not None and e.response.status_code == 404:
            raise LaunchError(
                f"--resume: {kernel.ref} has no version to resume from; push it without --resume"
            ) from None
        raise api_error(e, "--resume: reading the status of the version to resume from") from None
    newest = f"the newest version of {kernel.ref}"
    if status not in TERMINAL:
        raise LaunchError(
            f"--resume: {newest} is still {status}; wait until it ends (`{command}`), then push again with --resume", 1
        )
    if status != "COMPLETE":
        why = f": {failure}" if failure else ""
        raise LaunchError(
            f"--resume: {newest} ended {status}{why}, not COMPLETE, so there is no run to continue: see "
            f"{kernel.url}/log, fix the cause and push without --resume to start the run over",
            1,
        )
    try:
        files, _ = session_output(api, kernel, None)
    except Exception as e:  # noqa: BLE001
        raise api_error(e, "--resume: listing the output of the version to resume from") from None
    if not any(f.file_name.startswith("checkpoints/") for f in files):
        held = "has no output" if not files else "left no checkpoints in its output"
        raise LaunchError(f"--resume: {newest} {held}, so a resumed version would start over; push without --resume", 1)


def _session_request(cls_name: str, kernel: Kernel, version: int | None) -> Any:
    from kagglesdk.kernels.types import kernels_api_service as types

    request = getattr(types, cls_name)()
    request.user_name, request.kernel_slug = kernel.owner, kernel.slug
    if version is not None:
        request.version_label = f"v{version}"  # the API's form; a bare number answers 404
    return request


def session_status(api: Any, kernel: Kernel, version: int | None) -> tuple[str, str | None]:
    """(status, failure message) of one version. kaggle 2.2.x's kernels_status drops the version of OWNER/SLUG/N and
    answers for the newest one (kaggle-cli PR 1201), so the request is sent through the client's own connection."""
    request = _session_request("ApiGetKernelSessionStatusRequest", kernel, version)
    with api.build_kaggle_client() as client:
        response = client.kernels.kernels_api_client.get_kernel_session_status(request)
    status = response.status
    return getattr(status, "name", str(status)), response.failure_message or None


def session_output(api: Any, kernel: Kernel, version: int | None) -> tuple[list[Any], str]:
    """Every output file (name, url) of one version and its log, page by page (pinned, as in session_status)."""
    files: list[Any] = []
    log_text, token = "", None
    with api.build_kaggle_client() as client:
        while True:
            request = _session_request("ApiListKernelSessionOutputRequest", kernel, version)
            request.page_size = 100
            if token:
                request.page_token = token
            response = client.kernels.kernels_api_client.list_kernel_session_output(request)
            files += list(response.files or [])
            log_text = log_text or response.log or ""
            token = response.next_page_token
            if not token:
                return files, log_text


# ----------------------------------------------------------------------------------------------
# Following a version and fetching its run folder


def follow(
    api: Any,
    kernel: Kernel,
    version: int | None,
    out: Path,
    poll_interval: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll until the version ends, printing each status change; fetch on COMPLETE, show the log tail on ERROR.
    The interval grows from poll_interval to twice that (Kaggle's rate limits are unpublished)."""
    last, interval, started, not_found = None, poll_interval, time.monotonic(), 0
    max_interval = 2 * poll_interval
    where = f"{kernel.ref}" + (f" version {version}" if version else "")
    while True:
        try:
            status, failure = session_status(api, kernel, version)
        except Exception as e:  # noqa: BLE001
            error = api_error(e, "reading the kernel's status")
            # a version pushed seconds ago may not be listed yet: a few 404s before its first status are expected
            early_404 = "HTTP 404" in str(error) and last is None and not_found < 3
            not_found += early_404
            if not (transient(e) or early_404):
                raise error from None
            # a blip (rate limit, server error, network) must not abandon a 12-hour run
            print(f"{error}; retrying in {max_interval:.0f} s", file=sys.stderr)
            sleep(max_interval)
            continue
        if status != last:
            print(f"{where}: {status} ({(time.monotonic() - started) / 60:.0f} min)", flush=True)
            last = status
        if status in TERMINAL:
            return finish(api, kernel, version, status, failure, out)
        sleep(interval)
        interval = min(max_interval, interval * 1.5)


def transient(e: Exception) -> bool:
    import requests

    if isinstance(e, requests.HTTPError) and e.response is not None:
        return e.response.status_code == 429 or e.response.status_code >= 500
    return isinstance(e, (requests.ConnectionError, requests.Timeout))


def finish(api: Any, kernel: Kernel, version: int | None, status: str, failure: str | None, out: Path) -> int:
    if status == "COMPLETE":
        run_dir = fetch(api, kernel, version, out)
        print(tables.summary(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))))
        print(run_dir, flush=True)
        return 0
    print(f"{kernel.ref}: {status}" + (f": {failure}" if failure else ""), file=sys.stderr)
    try:
        _, log_text = session_output(api, kernel, version)
    except Exception as e:  # noqa: BLE001
        log_text = f"(the log could not be read: {e.__class__.__name__})"
    print("last lines of the kernel's log:\n" + log_tail(log_text), file=sys.stderr)
    print(f"full log: {kernel.url}/log", file=sys.stderr)
    return 1


def log_tail(log_text: str, lines: int = 30) -> str:
    """Kaggle's log is a JSON list of {stream_name, time, data}; plain text is shown as it is."""
    try:
        entries = json.loads(log_text)
        text = "".join(e.get("data", "") for e in entries if isinstance(e, dict))
    except ValueError:
        text = log_text
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"


def fetch(api: Any, kernel: Kernel, version: int | None, out: Path) -> Path:
    """Download the version's run folder (`runs/<name>/` in its output) into OUT/<name>, manifest.json last, and check
    every file against the manifest. A complete local copy is kept as it is."""
    try:
        files, log_text = session_output(api, kernel, version)
    except Exception as e:  # noqa: BLE001
        raise api_error(e, "listing the kernel's output") from None
    name = finished_run(files, kernel)
    run_dir = out / name
    if (run_dir / "manifest.json").is_file():
        print(f"{run_dir} is already complete; not downloading again", file=sys.stderr)
        return run_dir
    prefix = f"runs/{name}/"
    wanted = [f for f in files if f.file_name.startswith(prefix)]
    for f in sorted(wanted, key=lambda f: f.file_name == prefix + "manifest.json"):  # the manifest last
        download(f.url, run_dir, f.file_name.removeprefix(prefix))
    problems = manifest_problems(run_dir)
    if problems:
        (run_dir / "manifest.json").unlink()  # not complete: a later fetch downloads it again
        raise LaunchError(
            f"the downloaded run folder {run_dir} does not match its manifest: {'; '.join(problems[:5])}", 3
        )
    if log_text:
        (out / f"{name}.kaggle-v{version or 'latest'}.log").write_text(log_text, encoding="utf-8")
    return run_dir


def finished_run(files: list[Any], kernel: Kernel) -> str:
    """The name of the complete run folder (one with manifest.json) in a version's output."""
    complete = sorted(
        parts[1]
        for parts in (f.file_name.split("/") for f in files)
        if parts[0] == "runs" and parts[2:] == ["manifest.json"]
    )
    limit = next((f for f in files if f.file_name == SESSION_LIMIT_FILE), None)
    if not complete and limit is not None:
        raise stopped_early(kernel, limit.url)
    if not complete:
        raise LaunchError(
            f"{kernel.ref} finished without a complete run folder (no runs/*/manifest.json in its output); "
            f"see {kernel.url}/log",
            1,
        )
    return complete[-1]


def stopped_early(kernel: Kernel, url: str) -> LaunchError:
    """The kernel stopped the job before Kaggle's session limit and left its checkpoints: say how to continue."""
    import requests

    try:
        checkpoints = requests.get(url, timeout=60).json().get("checkpoints") or []
    except (requests.RequestException, ValueError):
        checkpoints = []
    newest = f"newest checkpoint {checkpoints[-1]}" if checkpoints else "no checkpoint was written yet"
    return LaunchError(
        f"{kernel.ref} stopped before Kaggle's {SESSION_HOURS:.0f}-hour session limit ({newest}); continue it with "
        f"`python -m launch kaggle --config <the same config> --kernel {kernel.ref} --resume --wait`",
        EXIT_RESUME,
    )


def download(url: str, run_dir: Path, relative: str) -> None:
    import requests

    target = (run_dir / relative).resolve()
    if run_dir.resolve() not in target.parents:
        raise LaunchError(f"the kernel's output names a file outside its run folder ({relative!r}); not downloading", 3)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with requests.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            with open(target, "wb") as handle:
                for chunk in response.iter_content(1 << 20):
                    handle.write(chunk)
    except requests.RequestException as e:
        raise api_error(e, f"downloading {relative}") from None


def manifest_problems(run_dir: Path) -> list[str]:
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    problems = []
    for entry in manifest["files"]:
        path = run_dir / entry["path"]
        if not path.is_file():
            problems.append(f"missing {entry['path']}")
        elif path.stat().st_size != entry["size"] or hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            problems.append(f"changed {entry['path']}")
    return problems


# ----------------------------------------------------------------------------------------------
# Command line


def push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch kaggle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the job as a Kaggle GPU kernel: build the kernel, push it, follow it and fetch the run folder.",
        epilog=(
            "later: python -m launch kaggle status OWNER/SLUG[/N] [--wait]\n"
            "       python -m launch kaggle fetch OWNER/SLUG[/N] [--out DIR]\n\n"
            "Gated models (Llama) need the Kaggle secret HF_TOKEN attached to the kernel once, in the web UI:\n"
            "the kernel's Edit page > Add-ons > Secrets. Without it the kernel stops within seconds and says so.\n"
            "Overrides are config keys: train.max_steps=500 or --train.max_steps 500."
        ),
    )
    parser.add_argument(
        "--config", required=True, help="preset name (" + ", ".join(config_mod.presets()) + ") or YAML path"
    )
    parser.add_argument("--kernel", help="OWNER/SLUG of the kernel (default: YOUR_USERNAME/dialogsum-<config>)")
    parser.add_argument("--accelerator", default=DEFAULT_SHAPE, help=f"machine shape (default {DEFAULT_SHAPE}: 2x T4)")
    parser.add_argument("--public", action="store_true", help="make the kernel public (default: private)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints of this kernel's previous version (attached as a source)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="write the kernel folder and print its metadata; no network"
    )
    parser.add_argument("--wait", action="store_true", help="follow the run, then fetch the run folder and print ROUGE")
    parser.add_argument("--folder", type=Path, help="where to write the kernel folder (default build/kaggle/SLUG)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where fetched run folders go (default ./runs)")
    return parser


def follow_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m launch kaggle {command}")
    parser.add_argument("kernel", help="OWNER/SLUG or OWNER/SLUG/VERSION (default: the newest version)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where fetched run folders go (default ./runs)")
    if command == "status":
        parser.add_argument("--wait", action="store_true", help="follow until it ends, then fetch")
    return parser


def check_shape(shape: str) -> list[str]:
    """Warnings for the machine shape; a TPU is refused (the job needs CUDA)."""
    if shape.lower().startswith("tpu"):
        raise LaunchError(f"--accelerator {shape} is a TPU; the job needs an NVIDIA GPU: use {DEFAULT_SHAPE}")
    if shape == "NvidiaTeslaP100":
        return ["NvidiaTeslaP100 is retired: Kaggle runs the kernel on T4 instead"]
    if shape not in SHAPES:
        return [f"machine shape {shape} is not one this launcher knows ({', '.join(SHAPES)}); estimates assume T4 x2"]
    return []


def resolve(args: argparse.Namespace, overrides: list[str]) -> config_mod.Config:
    try:
        cfg = config_mod.resolve(args.config, overrides)
    except config_mod.ConfigError as e:
        raise LaunchError(str(e)) from None
    return cfg


def kernel_for(args: argparse.Namespace, api: Any | None) -> Kernel:
    if args.kernel:
        kernel, version = parse_kernel(args.kernel)
        if version is not None:
            raise LaunchError("--kernel takes OWNER/SLUG without a version: each push makes a new version")
        return kernel
    owner = api.get_config_value("username") if api is not None else offline_username()
    if not owner:
        raise LaunchError("cannot tell your Kaggle username without credentials: pass --kernel USERNAME/SLUG")
    slug = default_slug(args.config)
    check_slug(slug)
    return Kernel(owner, slug)


def cmd_push(argv: list[str], poll_interval: float = 30.0) -> int:
    args, overrides = push_parser().parse_known_args(argv)
    cfg = resolve(args, overrides)
    warnings = check_shape(args.accelerator)
    if cfg.output.uri.startswith(("s3://", "hf://")):
        warnings.append(
            f"output.uri={cfg.output.uri} is not used on Kaggle: the run folder stays in /kaggle/working/runs "
            "and `fetch` brings it back; publish it from there with `python -m job publish`"
        )
    api = None if args.dry_run else connect()
    kernel = kernel_for(args, api)
    if args.resume and api is not None:
        check_resumable(api, kernel)
    local_cfg, cfg = cfg, for_kaggle(cfg, kernel)
    folder = args.folder or Path("build") / "kaggle" / kernel.slug
    meta = write_kernel_folder(folder, cfg, kernel, args.accelerator, args.public, args.resume)

    hours = estimate_hours(cfg, args.accelerator)
    gpu, count = gpus(args.accelerator)
    warnings += filter(None, [hours_warning(cfg, hours, args.accelerator), output_warning(estimate_output_gb(cfg))])
    print(
        f"kernel folder: {folder} ({CODE_FILE}: {(folder / CODE_FILE).stat().st_size / 1024:.0f} KB, the job's "
        "source and resolved config; no secrets)"
    )
    print(json.dumps(meta, indent=2))
    print(
        f"run: {cfg.output.run_name}; estimate ~{hours:.1f} h on {count}x {gpu} (figures as of {catalog.ESTIMATES_AS_OF})"
    )
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if hub_model(cfg.model.name):
        print(
            f"{cfg.model.name} is a Hub model: if it is gated, attach the Kaggle secret HF_TOKEN to the kernel once "
            f"({kernel.url}/edit > Add-ons > Secrets); without it the kernel stops within seconds and says so"
        )
    if args.dry_run:
        for line in datareport.report_lines(local_cfg):
            print(line, file=sys.stderr)
        return 0

    print(quota_line(api, hours))
    url, version, push_warnings = push(api, folder, kernel, args.resume)
    print(f"pushed {kernel.ref} version {version}: {url}", flush=True)
    for w in push_warnings:
        print(f"WARNING: {w}", file=sys.stderr, flush=True)
    if not args.wait:
        print(f"follow it: python -m launch kaggle status {kernel.ref}/{version} --wait")
        return 0
    return follow(api, kernel, version, args.out, poll_interval=poll_interval)


def hub_model(model: str) -> bool:
    """A Hub id (owner/name), which may be gated; the kernel itself decides with the job's own rule."""
    return not model.startswith(("builtin:", "/", ".", "~")) and model.count("/") == 1


def cmd_follow(command: str, argv: list[str], poll_interval: float = 30.0) -> int:
    args = follow_parser(command).parse_args(argv)
    kernel, version = parse_kernel(args.kernel)
    api = connect()
    if command == "status" and args.wait:
        return follow(api, kernel, version, args.out, poll_interval=poll_interval)
    try:
        status, failure = session_status(api, kernel, version)
    except Exception as e:  # noqa: BLE001
        raise api_error(e, "reading the kernel's status") from None
    if command == "status":
        print(
            f"{kernel.ref}"
            + (f" version {version}" if version else "")
            + f": {status}"
            + (f": {failure}" if failure else "")
        )
        return 0
    if status not in TERMINAL:
        raise LaunchError(
            f"{kernel.ref} is still {status}; wait with `python -m launch kaggle status {args.kernel} --wait`", 1
        )
    return finish(api, kernel, version, status, failure, args.out)


def main(argv: list[str] | None = None, poll_interval: float = 30.0) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in ("status", "fetch"):
            return cmd_follow(argv[0], argv[1:], poll_interval)
        return cmd_push(argv, poll_interval)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted (the kernel keeps running on Kaggle; follow it again with `status --wait`)", file=sys.stderr)
        return 130
