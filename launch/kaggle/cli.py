"""`python -m launch kaggle`: the job as a Kaggle GPU kernel, pushed, followed, resumed and fetched.

The command line: `kernel_folder` builds what is pushed (one code file, `kernel.py` with the job packed inside),
`client` talks to Kaggle.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from job import config as config_mod
from launch import catalog, datareport
from launch import cli as launch_cli
from launch import tracking as launch_tracking
from launch.errors import BadInput, Interrupted, LaunchError
from launch.kaggle.client import (
    TERMINAL,
    api_error,
    check_resumable,
    connect,
    finish,
    follow,
    offline_username,
    push,
    quota_line,
    session_status,
)
from launch.kaggle.kernel_folder import (
    CODE_FILE,
    DEFAULT_SHAPE,
    SHAPES,
    Kernel,
    check_slug,
    default_slug,
    estimate_hours,
    estimate_output_gb,
    for_kaggle,
    gpus,
    hours_warning,
    output_warning,
    parse_kernel,
    write_kernel_folder,
)

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
    launch_tracking.add_option(parser)
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
        raise BadInput(f"--accelerator {shape} is a TPU; the job needs an NVIDIA GPU: use {DEFAULT_SHAPE}")
    if shape == "NvidiaTeslaP100":
        return ["NvidiaTeslaP100 is retired: Kaggle runs the kernel on T4 instead"]
    if shape not in SHAPES:
        return [f"machine shape {shape} is not one this launcher knows ({', '.join(SHAPES)}); estimates assume T4 x2"]
    return []


def resolve(args: argparse.Namespace, overrides: list[str]) -> config_mod.Config:
    try:
        cfg = config_mod.resolve(args.config, overrides)
    except config_mod.ConfigError as e:
        raise BadInput(str(e)) from None
    return cfg


def kernel_for(args: argparse.Namespace, api: Any | None) -> Kernel:
    if args.kernel:
        kernel, version = parse_kernel(args.kernel)
        if version is not None:
            raise BadInput("--kernel takes OWNER/SLUG without a version: each push makes a new version")
        return kernel
    owner = api.get_config_value("username") if api is not None else offline_username()
    if not owner:
        raise BadInput("cannot tell your Kaggle username without credentials: pass --kernel USERNAME/SLUG")
    slug = default_slug(args.config)
    check_slug(slug)
    return Kernel(owner, slug)


def cmd_push(argv: list[str], poll_interval: float = 30.0) -> int:
    args, overrides = push_parser().parse_known_args(argv)
    cfg = resolve(args, overrides)
    if problems := launch_tracking.problems(args):
        raise BadInput(*problems)
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
    meta = write_kernel_folder(
        folder, cfg, kernel, args.accelerator, args.public, args.resume, mlflow=launch_tracking.uri_of(args)
    )

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
    if launch_tracking.uri_of(args):
        print(
            f"MLflow: the kernel tracks its run to {args.mlflow}; a server that needs a credential reads it from the "
            f"Kaggle secrets {' or '.join(launch_tracking.job_tracking.CREDENTIALS)} ({kernel.url}/edit > Add-ons > "
            "Secrets)"
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
            f"{kernel.ref} is still {status}; wait with `python -m launch kaggle status {args.kernel} --wait`"
        )
    return finish(api, kernel, version, status, failure, args.out)


def main(argv: list[str] | None = None, poll_interval: float = 30.0) -> int:
    return launch_cli.execute(lambda a: run(a, poll_interval), sys.argv[1:] if argv is None else argv)


def run(argv: list[str], poll_interval: float = 30.0) -> int:
    try:
        if argv and argv[0] in ("status", "fetch"):
            return cmd_follow(argv[0], argv[1:], poll_interval)
        return cmd_push(argv, poll_interval)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted (the kernel keeps running on Kaggle; follow it again with `status --wait`)"
        ) from None
