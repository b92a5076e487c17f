"""Checks before any weights load: a GPU when one is required and whether the config fits its memory, the Hugging
Face token and access to the model, the data files, where the results go, and disk space for the weights,
checkpoints and outputs.

Every check runs, and every problem found is reported at once in one line (a user on a cloud GPU should not pay one
start-up per mistake), with the exit code of the first problem's class.
"""

from __future__ import annotations

import codecs
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import builtin, data, destination, memory, rundir, runtime, secrets
from job.config import Config
from job.errors import AuthError, ConfigInputError, DataError, JobError, ResourceError

log = logging.getLogger(__name__)

GIB = memory.GIB

DISK_HEADROOM = 256 * 2**20
"""Bytes kept free beyond the estimate on each filesystem: logs, TensorBoard, the data set cache."""

# Bytes per parameter of checkpoints as the hub serves them: Llama-style decoders ship bf16 safetensors, T5
# (FLAN-T5) ships fp32.
HUB_BYTES_PER_PARAM = {"decoder": 2, "t5": 4}


def check(cfg: Config, token: str | None) -> None:
    """Raise a JobError listing every problem found (one line: what and how to fix each)."""
    problems: list[JobError] = []

    def attempt(check_one: Callable[[], None]) -> bool:
        try:
            check_one()
        except JobError as e:
            problems.append(e)
            return False
        return True

    attempt(lambda: check_gpu(cfg, visible_gpu()))
    attempt(lambda: check_model_folder(cfg.model.name))
    account: list[dict[str, Any] | None] = []  # who the token is: asked once, used by the Hub destination check
    hub_answers = attempt(lambda: account.append(check_token(cfg, token)))  # a refused token: every answer misleads
    if hub_answers:
        attempt(lambda: secrets.check_model_access(cfg.model.name, token, cfg.model.revision))
    attempt(lambda: check_data(cfg, token, ask_hub=hub_answers))
    if hub_answers or cfg.output.location.scheme != "hf":
        attempt(lambda: check_destination(cfg, token, account[0] if account else None))
    attempt(lambda: check_disk(cfg))
    if problems:
        first = problems[0]
        raise type(first)("; also: ".join(str(p) for p in problems))


# ----------------------------------------------------------------------------------------------
# GPU


def visible_gpu() -> tuple[str, float] | None:
    """(name, memory in GiB as torch reports it) of the GPU this process trains on; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / GIB


def check_gpu(cfg: Config, gpu: tuple[str, float] | None) -> None:
    """A GPU when train.require_gpu; on a GPU, the memory estimate of job.memory against what it has."""
    if gpu is None:
        if cfg.train.require_gpu:
            raise ResourceError(
                "no CUDA GPU is visible and train.require_gpu is true; run on a GPU machine, or set "
                "train.require_gpu=false to train on the CPU (only sensible for tiny models)"
            )
        return  # on the CPU there is no memory ceiling to judge against
    name, memory_gb = gpu
    if cfg.train.fsdp and runtime.distributed():
        log.info("GPU memory: train.fsdp shards the model across the GPUs; the one-GPU estimate does not apply")
        return
    message = memory.fit_message(cfg, name, memory_gb)
    if message:
        raise ResourceError(message)
    log.info("GPU: %s with %.1f GB; the memory estimate fits", name, memory_gb)


# ----------------------------------------------------------------------------------------------
# A local model folder (a hub model: secrets.check_model_access)


def looks_like_path(name: str) -> bool:
    """A name no hub id can be: an absolute, home or relative path, or more than one `/` (hub ids have at most
    one). `gpt2` and `owner/name` stay hub ids."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def check_model_folder(name: str) -> None:
    """A local model is a folder with config.json: without this check a typo in the path is reported by the hub
    client as a malformed repo id, and a folder of bare weights as an unrecognized model, both as tracebacks."""
    if builtin.is_builtin(name):
        return
    channel = runtime.channel_path(name)
    if channel is not None and not channel.is_dir():
        raise ConfigInputError(
            f"model.name={name}: the SageMaker channel folder {channel} does not exist; give the training job a "
            f"{name.removeprefix(runtime.CHANNEL)} channel (`python -m launch sagemaker --model-s3 URI`) or set "
            f"SM_CHANNEL_{name.removeprefix(runtime.CHANNEL).upper()} to the folder of the weights"
        )
    path = channel or Path(name).expanduser()
    if not path.exists():
        if looks_like_path(name):
            raise ConfigInputError(
                f"model.name={name}: no such folder; fix the path (a local model is a folder holding config.json and "
                "the weights) or use a hub id such as owner/name"
            )
        return  # a hub id: secrets.check_model_access asks the Hub
    if not path.is_dir():
        raise ConfigInputError(
            f"model.name={name} is a file; point it at the folder that holds config.json and the weights"
        )
    if not (path / "config.json").is_file():
        raise ConfigInputError(
            f"model.name={name} holds no config.json, so it is not a transformers model folder; point it at the "
            "folder that holds config.json and the weights (model.safetensors), e.g. the output of save_pretrained"
        )


# ----------------------------------------------------------------------------------------------
# The Hugging Face token (model access itself: secrets.check_model_access)


def check_token(cfg: Config, token: str | None) -> dict[str, Any] | None:
    """A token the Hub refuses (revoked, expired) fails here, by name: the Hub answers a refused token with 401 on
    every request, which the access checks would otherwise report as a missing repository or skip. Returns the
    Hub's answer (who the token is) for the destination check, None when there was nothing to ask or no answer."""
    uses_hub = (
        secrets.is_hub_id(cfg.model.name) or isinstance(_data_location(cfg), str) or cfg.output.location.scheme == "hf"
    )
    if not token or not uses_hub:
        return None
    return destination.hub_account(token)


def check_destination(cfg: Config, token: str | None, account: dict[str, Any] | None = None) -> None:
    """Every destination check (job.destination); a local folder was already probed when the run folder was made."""
    destination.check(cfg, token, account)


# ----------------------------------------------------------------------------------------------
# Data: files readable, not empty, text in UTF-8; a hub data set exists and opens with the token

TEXT_SUFFIXES = {".jsonl", ".json", ".csv"}
CHUNK = 1 << 20


def _data_location(cfg: Config) -> str | Path | None:
    """A hub id (str) or a local file or folder; None when the path is missing (check_data reports that)."""
    try:
        return data._location(cfg.data.dataset)
    except DataError:
        return None


def check_data(cfg: Config, token: str | None, ask_hub: bool = True) -> None:
    """datasets reports an unreadable, empty or non-UTF-8 file from deep inside its generator, often as
    "An error occurred while generating the dataset"; reading the files first names the file and the fix."""
    where = data._location(cfg.data.dataset)  # raises DataError for a missing file, folder or channel
    if isinstance(where, str):
        if ask_hub:
            check_hub_dataset(where, token)
        return
    files = data._folder_files(where) if where.is_dir() else {"all": str(where)}
    for path in files.values():
        check_data_file(Path(path))


def check_data_file(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(CHUNK)
            if not head.strip():
                raise DataError(f"{path} is empty; put the split's rows in it or remove the file")
            suffix = path.suffix.lower()
            if suffix == ".parquet" and not head.startswith(b"PAR1"):
                raise DataError(f"{path} is not a Parquet file (it does not start with PAR1); re-export it")
            if suffix in TEXT_SUFFIXES:
                lines = _check_utf8(path, f, head)
                if suffix == ".csv" and lines <= 1:
                    raise DataError(f"{path} holds a header but no rows; put the split's rows in it")
    except OSError as e:
        raise DataError(
            f"cannot read {path}: {e.strerror or e}; make it readable by the user the job runs as (uid {os.getuid()})"
        ) from None


def _check_utf8(path: Path, f, head: bytes) -> int:
    """Decode the whole file as UTF-8, chunk by chunk; returns the number of non-empty lines."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, chunk = 0, 0, head
    while chunk:
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path} is not UTF-8 text (byte 0x{chunk[e.start]:02x} at offset {offset + e.start}); re-save it "
                "as UTF-8 (e.g. `iconv -f cp1252 -t utf-8 IN > OUT`)"
            ) from None
        lines += sum(1 for line in text.splitlines() if line.strip())
        offset += len(chunk)
        chunk = f.read(CHUNK)
    return lines


def check_hub_dataset(repo_id: str, token: str | None) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    try:
        api.auth_check(repo_id, repo_type="dataset", token=token)
    except GatedRepoError:
        raise AuthError(
            f"data set {repo_id} is gated and this Hugging Face token has no access: request access on "
            f"{api.endpoint}/datasets/{repo_id}, then set HF_TOKEN to a token of that account"
        ) from None
    except RepositoryNotFoundError:
        hint = "check the spelling" + ("" if token else ", or set HF_TOKEN if it is a private data set")
        raise DataError(f"data set {repo_id!r} was not found on {api.endpoint} ({hint})") from None
    except Exception as e:  # noqa: BLE001 - offline with a cached copy is fine: the loader decides
        log.warning("could not check access to data set %s (%s); continuing", repo_id, e.__class__.__name__)
        return
    log.info("access to data set %s: ok", repo_id)


# ----------------------------------------------------------------------------------------------
# Disk


@dataclass
class DiskNeed:
    what: str
    path: Path  # where it is written (may not exist yet)
    bytes: int
    setting: str  # what the user changes to put it elsewhere


def disk_needs(cfg: Config) -> list[DiskNeed]:
    """What the run writes, estimated from job.memory's parameter counts. Empty when the model's shape is unknown."""
    try:
        arch = memory.architecture(cfg.model.name)
    except memory.UnknownArchitecture:
        log.info("disk check: no parameter counts for %s; skipped", cfg.model.name)
        return []
    counts = memory.parameter_counts(arch)
    lora = memory.lora_parameters(arch, cfg.lora.r, cfg.lora.target_modules)
    run_dir = rundir.local_parent(cfg).resolve() / str(cfg.output.run_name)
    checkpoints = (
        Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else runtime.default_checkpoint_dir(run_dir)
    )
    optimizer_bytes = 2 if "8bit" in cfg.train.optimizer else 8  # `auto` counted as 32-bit AdamW, the larger
    needs = []
    if secrets.is_hub_id(cfg.model.name):
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
        size = counts["total"] * HUB_BYTES_PER_PARAM.get(arch["kind"], 2)
        already = _folder_bytes(cache / f"models--{cfg.model.name.replace('/', '--')}")
        needs.append(DiskNeed(f"the {cfg.model.name} download", cache, max(0, size - already), "HF_HOME"))
    # save_total_limit newest checkpoints, one more while the next is written, and the best one kept besides
    per_checkpoint = lora * (4 + 4 + optimizer_bytes)
    needs.append(
        DiskNeed("checkpoints", checkpoints, per_checkpoint * (cfg.train.save_total_limit + 2), "train.checkpoint_dir")
    )
    outputs = lora * 4 + (counts["total"] * 2 if cfg.output.merge else 0)
    where = "output.uri" if not cfg.output.location.remote else "output.local_dir"
    needs.append(
        DiskNeed("the run folder" + (" with the merged model" if cfg.output.merge else ""), run_dir, outputs, where)
    )
    return needs


def check_disk(cfg: Config) -> None:
    """Each filesystem holds what the run writes to it, with some headroom."""
    by_filesystem: dict[Path, list[DiskNeed]] = {}
    for need in disk_needs(cfg):
        by_filesystem.setdefault(_mount_point(need.path), []).append(need)
    for mount, needs in by_filesystem.items():
        free = shutil.disk_usage(mount).free
        if sum(n.bytes for n in needs) + DISK_HEADROOM > free:
            parts = ", ".join(f"{n.what} in {n.path} ~{n.bytes / GIB:.1f} GB" for n in needs if n.bytes)
            settings = " or ".join(dict.fromkeys(n.setting for n in needs if n.bytes))
            raise ResourceError(
                f"not enough disk space on {mount} ({free / GIB:.1f} GB free): {parts}; free space there or point "
                f"{settings} at a larger disk"
            )


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem `path` will be written to (it may not exist yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    device = os.stat(path).st_dev
    while path != path.parent and os.stat(path.parent).st_dev == device:
        path = path.parent
    return path


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
