"""Everything the Kaggle launcher asks Kaggle: credentials, the weekly quota, pushing a version, its status, following
it to its end and fetching its run folder. The `kaggle` client is imported only where it is used, because importing
it authenticates."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from job import tables
from launch.errors import BadInput, LaunchError, NoCredentials, PlatformRefused, Resumable
from launch.kaggle.kernel import SESSION_LIMIT_FILE
from launch.kaggle.kernel_folder import SESSION_HOURS, Kernel

TERMINAL = {"COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"}


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
        raise NoCredentials(
            "no usable Kaggle credentials (none found, or the token was refused): create an API token at https://www.kaggle.com/settings (API > Create New Token) "
            "and save it to ~/.kaggle/access_token or set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY)"
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
        return PlatformRefused(f"{doing}: HTTP {status}: {hint}")
    if isinstance(e, requests.RequestException):
        return PlatformRefused(f"{doing}: cannot reach Kaggle ({e.__class__.__name__}); check the network")
    return BadInput(f"{doing}: {e}")  # the client refused what it was given


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
        raise PlatformRefused(message)
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
            raise BadInput(f"--resume: {kernel.ref} has no version to resume from; push it without --resume") from None
        raise api_error(e, "--resume: reading the status of the version to resume from") from None
    newest = f"the newest version of {kernel.ref}"
    if status not in TERMINAL:
        raise LaunchError(
            f"--resume: {newest} is still {status}; wait until it ends (`{command}`), then push again with --resume"
        )
    if status != "COMPLETE":
        why = f": {failure}" if failure else ""
        raise LaunchError(
            f"--resume: {newest} ended {status}{why}, not COMPLETE, so there is no run to continue: see "
            f"{kernel.url}/log, fix the cause and push without --resume to start the run over",
        )
    try:
        files, _ = session_output(api, kernel, None)
    except Exception as e:  # noqa: BLE001
        raise api_error(e, "--resume: listing the output of the version to resume from") from None
    if not any(f.file_name.startswith("checkpoints/") for f in files):
        held = "has no output" if not files else "left no checkpoints in its output"
        raise LaunchError(f"--resume: {newest} {held}, so a resumed version would start over; push without --resume")


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
        raise PlatformRefused(
            f"the downloaded run folder {run_dir} does not match its manifest: {'; '.join(problems[:5])}"
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
            f"see {kernel.url}/log"
        )
    return complete[-1]


def stopped_early(kernel: Kernel, url: str) -> Resumable:
    """The kernel stopped the job before Kaggle's session limit and left its checkpoints: say how to continue."""
    import requests

    try:
        checkpoints = requests.get(url, timeout=60).json().get("checkpoints") or []
    except (requests.RequestException, ValueError):
        checkpoints = []
    newest = f"newest checkpoint {checkpoints[-1]}" if checkpoints else "no checkpoint was written yet"
    return Resumable(
        f"{kernel.ref} stopped before Kaggle's {SESSION_HOURS:.0f}-hour session limit ({newest}); continue it with "
        f"`python -m launch kaggle --config <the same config> --kernel {kernel.ref} --resume --wait`"
    )


def download(url: str, run_dir: Path, relative: str) -> None:
    import requests

    target = (run_dir / relative).resolve()
    if run_dir.resolve() not in target.parents:
        raise PlatformRefused(
            f"the kernel's output names a file outside its run folder ({relative!r}); not downloading"
        )
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
