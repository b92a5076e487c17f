"""`python -m job COMMAND [--config NAME_OR_PATH] [key=value ...]`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from job import config as config_mod
from job import logs, runtime
from job.errors import ConfigInputError, JobError

COMMANDS = {
    "train": ("job.train", "fine-tune, evaluate base vs fine-tuned with ROUGE, write (and publish) a run folder"),
    "predict": ("job.predict", "summarize dialogues with a finished run's adapter"),
    "publish": ("job.publish", "upload a finished local run to s3:// or hf:// (again, after a failure)"),
}

DESCRIPTION = """Fine-tune a causal LM for dialogue summarization with QLoRA and score it with ROUGE.

commands:
{commands}

shipped presets (--config NAME; or a path to a YAML file):
{presets}

Config overrides: `dotted.key=value` or `--dotted.key value`; values are YAML scalars
(true, 2, 2e-4, [q_proj, v_proj]). Precedence: defaults < YAML < SageMaker hyperparameters < command line.
`python -m job train --help` lists every key.

examples:
  python -m job train --config smoke
  python -m job train --config llama-3.2-3b-qlora output.uri=s3://my-bucket/runs
  python -m job predict --run runs/RUN --input dialogues.jsonl --output summaries.jsonl
"""


def top_help() -> str:
    commands = "\n".join(f"  {name:<9} {desc}" for name, (_, desc) in COMMANDS.items())
    presets = "\n".join(f"  {name:<20} {desc}" for name, desc in config_mod.presets().items())
    return "usage: python -m job COMMAND [--config NAME_OR_PATH] [key=value ...]\n\n" + DESCRIPTION.format(
        commands=commands, presets=presets
    )


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of commands that take a config: --config plus free-form overrides."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override with key=value or --key value):\n" + config_mod.options_help(),
    )
    parser.add_argument("--config", help="preset name (" + ", ".join(config_mod.presets()) + ") or YAML path")
    return parser


def resolve_config(config: str | None, overrides: list[str]) -> config_mod.Config:
    """The resolved config for this process: SageMaker hyperparameters apply only on SageMaker."""
    hps = runtime.hyperparameters() if runtime.platform() == "sagemaker" else {}
    try:
        return config_mod.resolve(config, overrides, hps)
    except config_mod.ConfigError as e:
        raise ConfigInputError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(top_help())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        print("run `python -m job --help` for usage", file=sys.stderr)
        return 2
    logs.setup()
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.main(rest) or 0
    except JobError as e:
        message = logs.redact(str(e))
        logging.getLogger("job").error("%s", message)
        print(f"error ({e.kind}): {message}", file=sys.stderr)
        runtime.write_failure(f"{e.kind}: {message}")
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
