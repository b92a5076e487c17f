"""`python -m job predict --run RUN_DIR --input dialogues.jsonl [--output out.jsonl]`: summaries from a finished run."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from job.errors import ConfigInputError, DataError

log = logging.getLogger("job.predict")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m job predict",
        description="Summarize dialogues with a finished run: loads the base model recorded in the run (4-bit for "
        "qlora runs) with its adapter and the run's prompt, and generates greedy summaries.",
    )
    parser.add_argument("--run", required=True, type=Path, help="a complete run folder (holds manifest.json)")
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        help="JSON lines with a dialogue per line (the run's data.dialogue_column, or `dialogue`); "
        "an `id` column is carried through",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write JSON lines (default: stdout); never inside a complete run folder, and an existing file "
        "only with --overwrite",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument(
        "--batch-size", type=int, help="dialogues per generation batch (default: the run's eval.batch_size)"
    )
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's eval.max_new_tokens")
    return parser.parse_args(argv)


def read_dialogues(path: Path, column: str) -> list[dict]:
    if not path.is_file():
        raise DataError(f"--input {path}: no such file")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"--input {path} is not UTF-8 text; re-save it as UTF-8") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"--input {path}, line {n}: not JSON ({e.msg})") from None
        text = row.get(column, row.get("dialogue")) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            either = f"{column!r} (or 'dialogue')" if column != "dialogue" else "'dialogue'"
            raise DataError(f"--input {path}, line {n}: no {either} text")
        rows.append({"id": str(row.get("id", n)), "dialogue": text.strip()})
    if not rows:
        raise DataError(f"--input {path} holds no dialogues")
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from job import config as config_mod
    from job import generation, modeling, prompts, rundir

    if not rundir.is_complete(args.run):
        raise ConfigInputError(f"--run {args.run} is not a complete run folder (no manifest.json)")
    if args.output:
        rundir.check_output_paths("--output", args.output, [args.output], args.overwrite)
    cfg = config_mod.build(config_mod.read_yaml(str(args.run / "config.yaml")))
    rows = read_dialogues(args.input, cfg.data.dialogue_column)
    hw = modeling.detect_hardware(cfg.model.compute_dtype)
    model, tokenizer = modeling.load_for_inference(args.run, cfg, hw)
    max_prompt = prompts.prompt_budget(cfg.data, model.config.is_encoder_decoder)
    ids = [prompts.prompt_ids_for_generation(tokenizer, cfg.data, r["dialogue"], max_prompt) for r in rows]
    out = generation.generate(
        model,
        tokenizer,
        ids,
        args.max_new_tokens or cfg.eval.max_new_tokens,
        args.batch_size or cfg.eval.batch_size,
        "summarizing",
        compute_dtype=modeling.for_architecture(hw, model.config.is_encoder_decoder).compute_dtype,
    )
    lines = [json.dumps({"id": r["id"], "summary": s}, ensure_ascii=False) for r, s in zip(rows, out.texts)]
    if args.output:
        rundir.write_atomic(args.output, "\n".join(lines) + "\n")
        log.info("wrote %d summaries to %s", len(lines), args.output)
    else:
        sys.stdout.write("\n".join(lines) + "\n")
    return 0
