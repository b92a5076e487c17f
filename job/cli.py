"""`python -m job COMMAND [--config NAME_OR_PATH] [key=value ...]`."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import shutil
import sys
from pathlib import Path

from job import config as config_mod
from job import logs, runtime
from job.errors import ConfigInputError, JobError, ResourceError

COMMANDS = {
    "train": ("job.train", "fine-tune, evaluate base vs fine-tuned with ROUGE, write (and publish) a run folder"),
    "predict": ("job.predict", "summarize dialogues with a finished run's adapter"),
    "publish": ("job.publish", "upload a finished local run to s3:// or hf:// (again, after a failure)"),
    "compare": ("job.compare", "one ROUGE table (markdown, CSV, bar chart) across runs: local, s3:// or hf://"),
    "data": (
        "job.datareport",
        "the data a run would use, with the tokenizer only: rows, references, token lengths, cuts",
    ),
    "score": ("job.score", "score any predictions with the job's ROUGE scorer (no model loaded)"),
    "serve": ("job.serve", "serve a finished run over HTTP: SageMaker's /ping and /invocations, a page at /"),
}

DESCRIPTION = """Fine-tune an LLM for dialogue summarization with QLoRA (or LoRA, full, prompt tuning) and score it with ROUGE.

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
  python -m job serve --run runs/RUN                     # http://127.0.0.1:8080
  python -m job score --predictions summaries.txt --data dialogsum.test.jsonl --reference-column summary1
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
        return report(e)
    except (OSError, RuntimeError) as e:
        known = resource_error(e)
        if known is None:
            raise
        return report(known)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def report(e: JobError) -> int:
    """One line on stderr (and SageMaker's failure file) instead of a traceback; the exit code of its class."""
    message = logs.redact(str(e))
    logging.getLogger("job").error("%s", message)
    print(f"error ({e.kind}): {message}", file=sys.stderr)
    runtime.write_failure(f"{e.kind}: {message}")
    return e.exit_code


def resource_error(e: BaseException) -> ResourceError | None:
    """A full disk or an exhausted GPU anywhere in the job, as a clear ResourceError; None for other errors."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" while writing {e.filename}" if e.filename else ""
        return ResourceError(
            f"the disk is full{where}{_free_space(e.filename)}; free space there, or move the run (output.local_dir, "
            "or output.uri for a local folder), the checkpoints (train.checkpoint_dir) or the Hugging Face cache "
            "(HF_HOME) to a larger disk"
        )
    if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, named so as not to import torch here
        return ResourceError(
            "the GPU ran out of memory outside training (loading the model or generating summaries); lower "
            "eval.batch_size or data.max_length, use method=qlora, or use a GPU with more memory"
        )
    return None


def _free_space(filename: str | None) -> str:
    if not filename:
        return ""
    folder = Path(filename).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f" ({shutil.disk_usage(folder).free / 2**30:.1f} GB free there now)"
    except OSError:
        return ""
