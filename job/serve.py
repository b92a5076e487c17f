"""`python -m job serve [--run RUN]`: a finished run's model behind SageMaker's inference contract (docs/serving.md).

RUN is a local run folder, `s3://bucket/prefix/<run>` or `hf://owner/repo[@revision]`; without it the model is read
from SageMaker's model folder (/opt/ml/model), where an endpoint or a Batch Transform job mounts the run's S3
folder. The run folder is checked, and a remote one fetched, before the port opens; the model then loads in the
background while `/ping` answers 503, and generation runs on one worker thread (job/server.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from job import rundir, runtime
from job import uri as uri_mod
from job.errors import AuthError, ConfigInputError, OutputError, ResourceError

log = logging.getLogger("job.serve")

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
"""Where SageMaker puts an endpoint's or a transform job's model data (here: the run folder, uncompressed)."""
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_BODY_BYTES = 6 * 2**20
"""Batch Transform's default MaxPayloadInMB (6), and InvokeEndpoint's own payload cap."""
MAX_DIALOGUES = 32
"""Dialogues per JSON request: with --max-new-tokens-cap, a real-time request answers within InvokeEndpoint's 60 s."""
MAX_RECORDS = 1000
"""Lines per JSON Lines request (Batch Transform's MultiRecord mini-batches, with InvocationsTimeoutInSeconds)."""
MAX_NEW_TOKENS_CAP = 512
MAX_WAIT_MS = 20.0
RUN_FILES = ("manifest.json", "config.yaml", "metrics.json", "predictions.jsonl")
"""The run files the server reads besides the weights (manifest: the run is complete; predictions: the page's
sample dialogues)."""
WEIGHT_FOLDERS = ("adapter", "model", "base_model")
SAMPLES = 8


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m job serve",
        description="Serve a finished run's model over HTTP: GET /ping, POST /invocations (JSON or JSON Lines), "
        "and a page at / to try it. The same prompt, greedy settings and truncation as the run's evaluation.",
    )
    p.add_argument(
        "--run",
        help="a complete run folder, s3://bucket/prefix/<run> or hf://owner/repo[@revision] "
        f"(default: {SAGEMAKER_MODEL_DIR}, where SageMaker mounts the model)",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s; the image: 0.0.0.0)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--merged", action="store_true", help="serve the run's merged model (merged/, output.merge=true)")
    p.add_argument(
        "--batch-size", type=int, help="most dialogues generated together (default: the run's eval.batch_size)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=MAX_WAIT_MS,
        help="how long a batch waits for more dialogues before it starts (default: %(default)s)",
    )
    p.add_argument("--max-dialogues", type=int, default=MAX_DIALOGUES, help="dialogues per JSON request")
    p.add_argument("--max-records", type=int, default=MAX_RECORDS, help="lines per JSON Lines request")
    p.add_argument("--max-new-tokens-cap", type=int, default=MAX_NEW_TOKENS_CAP, help="largest max_new_tokens")
    p.add_argument("--download-dir", type=Path, help="where an s3:// or hf:// run is fetched (default: a temp folder)")
    args = p.parse_args(argv)
    for name in ("batch_size", "max_dialogues", "max_records", "max_new_tokens_cap"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigInputError(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if args.max_wait_ms < 0:
        raise ConfigInputError(f"--max-wait-ms {args.max_wait_ms}: must be 0 or more")
    if not 0 <= args.port <= 65535:
        raise ConfigInputError(f"--port {args.port}: must be 0-65535")
    return args


# ----------------------------------------------------------------------------------------------
# The run: checked where it lies, fetched when remote


def check_run(folder: Path, source: str, merged: bool = False) -> None:
    """A run the server can load: complete (its manifest, or for hf:// its weights and metrics.json), its
    config.yaml, and an adapter or a model (merged/ with --merged)."""
    if not folder.is_dir():
        raise ConfigInputError(f"--run {source} is not a folder; pass a finished run folder (it holds manifest.json)")
    if not uri_mod.scheme_of(source) == "hf" and not rundir.is_complete(folder):
        raise ConfigInputError(
            f"--run {source} has no manifest.json: the run did not finish (or its upload did not); resume or "
            "publish it, or pass a finished run"
        )
    if not (folder / "config.yaml").is_file():
        raise ConfigInputError(
            f"--run {source} has no config.yaml; is it a run folder written by `python -m job train`?"
        )
    if merged and not (folder / "merged" / "config.json").is_file():
        raise ConfigInputError(
            f"--merged: {source} has no merged model (merged/); train with output.merge=true, or leave out --merged"
        )
    has_adapter = (folder / "adapter" / "adapter_config.json").is_file()
    has_model = (folder / "model" / "config.json").is_file()
    if not (has_adapter or has_model):
        raise ConfigInputError(
            f"--run {source} holds neither an adapter (adapter/) nor a model (model/): nothing to serve; pass the "
            "folder of a finished run"
        )


def resolve_run(source: str | None, download_dir: Path, merged: bool = False) -> Path:
    """The local run folder to serve: the given one, a fetched copy of an s3:// or hf:// run, or SageMaker's."""
    if source is None:
        folder = Path(os.environ.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR))
        if not folder.exists():
            raise ConfigInputError(
                f"no --run given and {folder} (where SageMaker mounts the model) does not exist; pass --run with a "
                "run folder, s3://bucket/prefix/<run> or hf://owner/repo"
            )
        check_run(folder, str(folder), merged)
        return folder
    try:
        where = uri_mod.parse(source, "--run", revision=True)
    except uri_mod.LocationError as e:
        raise ConfigInputError(str(e)) from None
    if where.scheme == "s3":
        folder = fetch_s3(where, download_dir / "run", merged)
    elif where.scheme == "hf":
        folder = fetch_hub(where, download_dir, merged)
    else:
        folder = where.local_path()
    check_run(folder, source, merged)
    return folder


def wanted(path: str, merged: bool) -> bool:
    """The run files serving needs: not checkpoints, TensorBoard logs or the report's pictures."""
    top = path.split("/", 1)[0]
    return path in RUN_FILES or top in WEIGHT_FOLDERS or (merged and top == "merged")


def s3_errors(uri: str):
    """S3's errors while reading the run to serve, as one line each (job.destination)."""
    from job import destination

    return destination.reading_a_run_from_s3(
        uri,
        "serving a run",
        no_bucket=f"bucket of --run {uri} does not exist; fix --run",
        missing=(
            f"--run {uri} has no manifest.json: not a finished run (runs lie at s3://bucket/prefix/<run name>, "
            "and an unfinished upload is finished with `python -m job publish`)"
        ),
    )


def fetch_s3(where: uri_mod.Location, dest: Path, merged: bool) -> Path:
    """The run's files that serving needs, as its manifest lists them, each checked against its size and sha256."""
    from job.publish import s3_client

    if not where.prefix:
        raise ConfigInputError(f"--run {where.uri}: name the run's own prefix, s3://bucket/prefix/<run name>")
    client = s3_client()
    with s3_errors(where.uri):
        body = client.get_object(Bucket=where.bucket, Key=where.key(rundir.MANIFEST))["Body"].read()
    manifest = json.loads(body)
    files = [f for f in manifest.get("files", []) if wanted(f["path"], merged)]
    log.info("fetching %d files of %s", len(files), where.uri)
    for f in files:
        path = dest / f["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with s3_errors(where.uri):
            client.download_file(where.bucket, where.key(f["path"]), str(path))
        if path.stat().st_size != f["size"] or rundir.sha256(path) != f["sha256"]:
            raise OutputError(f"{where.child(f['path'])} differs from the run's manifest; publish the run again")
    rundir.write_atomic(dest / rundir.MANIFEST, body)
    return dest


def fetch_hub(where: uri_mod.Location, download_dir: Path, merged: bool) -> Path:
    """A published run (weights at the repo's root, the run's files beside them) laid out as a run folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    from job import secrets

    secrets.resolve_hf_token()  # published runs are private by default
    try:
        snapshot = Path(
            snapshot_download(where.repo_id, revision=where.revision or None, local_dir=download_dir / "snapshot")
        )
    except GatedRepoError:
        raise AuthError(f"{where.uri} is gated: accept its terms on the Hub with the token's account") from None
    except RepositoryNotFoundError:
        raise ConfigInputError(
            f"{where.uri} does not exist or is private to another account; check --run, or set HF_TOKEN to a token "
            "that can read it"
        ) from None
    except LocalEntryNotFoundError:
        raise OutputError(f"cannot download {where.uri}: the Hub is unreachable (or HF_HUB_OFFLINE is set)") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise OutputError(f"cannot read {where.uri} ({status or e.__class__.__name__})") from None
    weights = "model" if (snapshot / "config.json").is_file() else "adapter"
    if not (snapshot / "metrics.json").is_file() or not (
        (snapshot / "adapter_config.json").is_file() or (snapshot / "config.json").is_file()
    ):
        raise ConfigInputError(
            f"--run {where.uri} holds no adapter or model with its metrics.json: not a run published by "
            "`python -m job publish`"
        )
    run = download_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / weights).symlink_to(snapshot, target_is_directory=True)
    for name in ("config.yaml", "metrics.json", "base_model", "merged"):
        if (snapshot / name).exists():
            (run / name).symlink_to(snapshot / name)
    return run


# ----------------------------------------------------------------------------------------------
# The model


@dataclass
class Served:
    """What the server says about the run it serves: on /ping, in every answer, on the page."""

    run: str
    method: str
    adapter: bool
    """Whether `model: base` is served (the adapter switched off)."""
    dialogue_column: str
    max_new_tokens: int
    """The run's eval.max_new_tokens: the default of a request."""
    batch_size: int
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    dtype: str = ""


def describe(run_dir: Path, merged: bool = False):
    """The run's config and what the server says about it, read before the model loads."""
    from job import config as config_mod

    cfg = staged_base(config_mod.build(config_mod.read_yaml(str(run_dir / "config.yaml"))))
    metrics_path, predictions = run_dir / "metrics.json", run_dir / "predictions.jsonl"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    samples = []
    if predictions.is_file():
        for line in predictions.read_text(encoding="utf-8").splitlines()[:SAMPLES]:
            samples.append(json.loads(line)["dialogue"])
    manifest = run_dir / rundir.MANIFEST
    name = json.loads(manifest.read_text())["run_name"] if manifest.is_file() else None
    served = Served(
        run=name or (metrics.get("run") or {}).get("name") or run_dir.name,
        method=cfg.method,
        adapter=cfg.method != "full" and not merged,
        dialogue_column=cfg.data.dialogue_column,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        metrics=metrics,
        samples=samples,
    )
    return cfg, served


def staged_base(cfg):
    """The run's config with its base model read from the staged weights BASE_MODEL_DIR names, where the launcher
    set it (`deploy|transform --model-s3`); as it is otherwise."""
    folder = os.environ.get(runtime.BASE_MODEL_ENV)
    if not folder:
        return cfg
    if not (Path(folder) / "config.json").is_file():
        raise ConfigInputError(
            f"{runtime.BASE_MODEL_ENV}={folder} holds no model (no config.json): the staged base model was not "
            "mounted; pass the --model-s3 URI that `python -m launch sagemaker stage-model` printed, or unset it"
        )
    log.info("base model: %s (staged), not %s", folder, cfg.model.name)
    return replace(cfg, model=replace(cfg.model, name=folder, revision=None))


class Model:
    """The run's model as it was scored: the base with its adapter (4-bit for qlora), the full model, or the merged
    one; prompts cut like the evaluation's, greedy generation through job.generation."""

    def __init__(self, run_dir: Path, cfg, merged: bool = False):
        from job import modeling, prompts

        hw = modeling.detect_hardware(cfg.model.compute_dtype)
        if merged:  # 16-bit weights with the adapter in them: loaded like a lora run's base, without an adapter
            path = str(run_dir / "merged")
            plain = replace(cfg, method="lora")
            hw = modeling.for_architecture(hw, modeling.is_encoder_decoder(path, plain))
            self.model = modeling.load_base_model(plain, path, hw).eval()
            self.tokenizer = modeling.load_tokenizer(path, plain)
        else:
            self.model, self.tokenizer = modeling.load_for_inference(run_dir, cfg, hw)
        encoder_decoder = bool(self.model.config.is_encoder_decoder)
        self.compute_dtype = modeling.for_architecture(hw, encoder_decoder).compute_dtype
        self.dtype = modeling.dtype_name(self.compute_dtype)
        self.adapter = hasattr(self.model, "disable_adapter")
        self.cfg = cfg
        self.max_prompt = prompts.prompt_budget(cfg.data, encoder_decoder)

    def prompt_ids(self, dialogue: str) -> list[int]:
        from job import prompts

        return prompts.prompt_ids_for_generation(self.tokenizer, self.cfg.data, dialogue, self.max_prompt)

    def summarize(self, prompts: list[list[int]], base: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        """(summary, new tokens) per prompt, all in one batch; `base`: with the adapter switched off."""
        from job import generation

        switch = self.model.disable_adapter() if base else contextlib.nullcontext()
        with switch:
            out = generation.generate(
                self.model, self.tokenizer, prompts, max_new_tokens, len(prompts), show_progress=False,
                compute_dtype=self.compute_dtype,
            )  # fmt: skip
        return list(zip(out.texts, out.new_tokens))


# ----------------------------------------------------------------------------------------------
# The command


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened before the model loads: a port in use is one line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ResourceError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); stop what uses that port or pass --port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class InThread:
    """The server of a local run in a thread of this process, on a free port of 127.0.0.1 (tests, benchmarks):
    `with InThread(run_dir) as s:` returns once /ping answers 200; `s.url`, `s.service` (the batcher's counts)."""

    def __init__(self, run_dir: Path, batch_size: int | None = None, **limits: Any):
        import threading

        from job import server

        cfg, served = describe(run_dir)
        served.batch_size = batch_size or served.batch_size
        defaults = dict(
            max_body_bytes=MAX_BODY_BYTES, max_dialogues=MAX_DIALOGUES, max_records=MAX_RECORDS,
            max_new_tokens=MAX_NEW_TOKENS_CAP, max_wait_s=MAX_WAIT_MS / 1000,
        )  # fmt: skip
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server, self.service = server.make_server(
            served, lambda: Model(run_dir, cfg), server.Limits(**{**defaults, **limits})
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> InThread:
        import time

        self.thread.start()
        while self.service.model is None:
            if self.service.error is not None:
                raise self.service.error
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from job import secrets, server

    download_dir = args.download_dir or Path(tempfile.mkdtemp(prefix="dialogsum-serve-"))
    try:
        run_dir = resolve_run(args.run, download_dir, args.merged)
        cfg, served = describe(run_dir, args.merged)
        if args.batch_size:
            served.batch_size = args.batch_size
        secrets.resolve_hf_token()  # a gated base model: HF_TOKEN, HF_TOKEN_FILE or HF_TOKEN_SECRET_ID, as in training
        limits = server.Limits(
            max_body_bytes=MAX_BODY_BYTES,
            max_dialogues=args.max_dialogues,
            max_records=args.max_records,
            max_new_tokens=max(args.max_new_tokens_cap, 1),
            max_wait_s=args.max_wait_ms / 1000,
        )
        sock = bind(args.host, args.port)
        return server.run(sock, served, lambda: Model(run_dir, cfg, args.merged), limits)
    finally:
        if args.download_dir is None:
            shutil.rmtree(download_dir, ignore_errors=True)
