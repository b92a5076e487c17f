"""`python -m job score --predictions FILE [--data SPEC] [--split test] [--reference-column COL ...] [--output FILE]`:
any predictions scored with the job's own scorer (job.scoring), printed as the job's ROUGE table and written as a
block of metrics.json's schema. Loads no model and imports no torch: rouge-score, numpy and the data loader only.

Predictions are one of: a text file with one summary a line, in the split's order; JSON lines with `id` and
`summary`; or a run's predictions.jsonl, scored (its `finetuned` field, or --field) against the references it holds
unless --data names others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from job import scoring, tables
from job.config import DataConfig, EvalConfig, TrainConfig
from job.errors import ConfigInputError, DataError

log = logging.getLogger("job.score")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m job score",
        description="Score predictions with the job's ROUGE scorer (rouge_score, stemming, every reference of each "
        "dialogue, seeded bootstrap interval) and print the ROUGE table; --output writes the block as JSON.",
        epilog="example: python -m job score --predictions bart-large-baseline.test.txt "
        "--data dialogsum.test.jsonl --reference-column summary1",
    )
    parser.add_argument(
        "--predictions",
        required=True,
        type=Path,
        help="a text file (one summary a line, in the split's order), JSON lines with `id` and `summary`, "
        "or a run's predictions.jsonl",
    )
    parser.add_argument("--data", help="the data set the predictions summarize (any data.dataset spec)")
    parser.add_argument("--split", default="test", help="its split to score against (default: test)")
    parser.add_argument(
        "--reference-column",
        nargs="+",
        action="extend",
        help="reference column(s) (default: `summary`, or `summary1..N` where `summary` is absent)",
    )
    parser.add_argument("--dialogue-column", default="dialogue", help="the dialogue column (default: dialogue)")
    parser.add_argument(
        "--field", help="the JSON field holding each prediction (default: `summary`; `finetuned` in a run's file)"
    )
    parser.add_argument("--output", type=Path, help="write the scored block as JSON to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser.parse_args(argv)


@dataclass
class Predictions:
    texts: list[str]
    ids: list[str] | None  # None: a text file, matched by order
    references: list[list[str]] | None  # what a run's predictions.jsonl holds


def read_predictions(path: Path, field: str | None) -> Predictions:
    if not path.is_file():
        raise DataError(f"--predictions {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"--predictions {path} is not UTF-8 text ({e.reason}); re-save it as UTF-8") from None
    if not lines:
        raise DataError(f"--predictions {path} is empty")
    if path.suffix.lower() not in (".jsonl", ".json"):
        return Predictions([line.strip() for line in lines], None, None)
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"--predictions {path}: line {n} is not JSON ({e.msg}); one JSON object a line") from None
        if not isinstance(row, dict):
            raise DataError(f"--predictions {path}: line {n} is not a JSON object")
        rows.append(row)
    held = all(isinstance(r.get("references"), list) for r in rows)
    key = field or ("finetuned" if held and "summary" not in rows[0] else "summary")
    for n, row in enumerate(rows, 1):
        if "id" not in row or not isinstance(row.get(key), str):
            what = "an `id`" if "id" not in row else f"a {key!r} text"
            raise DataError(f"--predictions {path}: row {n} has no {what}; give `id` and {key!r} (or --field)")
    refs = [[str(r) for r in row["references"]] for row in rows] if held else None
    return Predictions([str(r[key]).strip() for r in rows], [str(r["id"]) for r in rows], refs)


def references_from_data(args: argparse.Namespace, preds: Predictions) -> list[list[str]]:
    """The references of each prediction, in prediction order."""
    from job import data

    columns = args.reference_column or ["summary"]
    cfg = DataConfig(
        dataset=args.data,
        dialogue_column=args.dialogue_column,
        summary_column=columns[0] if len(columns) == 1 else columns,
    )
    rows = data.load_split(cfg, args.split)
    dialogues = data.unique_dialogues(rows, None)
    where = f"split {args.split!r} of {args.data}"
    if preds.ids is None:
        if len(preds.texts) != len(dialogues):
            raise DataError(
                f"--predictions {args.predictions} has {len(preds.texts)} lines but {where} has {len(dialogues)} "
                f"dialogues; give one summary a line, in the split's order"
            )
        return [d.references for d in dialogues]
    order = {d.dialogue: i for i, d in enumerate(dialogues)}
    index = {}  # every row id, so the Hub layout's test_0_1, test_0_2 ... all name dialogue test_0_1
    for row in rows:
        index.setdefault(row["id"], order[row["dialogue"]])
    seen: dict[int, str] = {}
    for pid in preds.ids:
        if pid not in index:
            raise DataError(f"--predictions {args.predictions}: unknown id {pid!r}: {where} has no row with it")
        if index[pid] in seen:
            raise DataError(
                f"--predictions {args.predictions}: ids {seen[index[pid]]!r} and {pid!r} are the same dialogue; "
                f"give one prediction per dialogue"
            )
        seen[index[pid]] = pid
    if len(seen) != len(dialogues):
        missing = [d.id for i, d in enumerate(dialogues) if i not in seen]
        raise DataError(
            f"--predictions {args.predictions} has {len(seen)} predictions but {where} has {len(dialogues)} "
            f"dialogues (no prediction for {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    return [dialogues[index[pid]].references for pid in preds.ids]


def scorer_settings(predictions: Path) -> tuple[int, int]:
    """Bootstrap samples and seed: those of the run whose predictions.jsonl this is (its config.yaml), so the run's
    intervals are reproduced too; else the job's defaults."""
    samples, seed = EvalConfig().bootstrap_samples, TrainConfig().seed
    run_config = predictions.parent / "config.yaml"
    if predictions.name == "predictions.jsonl" and run_config.is_file():
        import yaml

        tree = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
        samples = (tree.get("eval") or {}).get("bootstrap_samples", samples)
        seed = (tree.get("train") or {}).get("seed", seed)
    return samples, seed


def score_block(texts: list[str], references: list[list[str]], samples: int, seed: int) -> dict:
    """A scored block of metrics.json with its scorer settings."""
    block = scoring.score(texts, references, samples, seed)
    block["scorer"] = scoring.scorer_info(len(texts), sum(len(r) for r in references), samples, seed)
    return block


def table(block: dict, label: str) -> str:
    """The caption and the rows: the mean over every reference, then (with several) first and best reference."""
    blocks = [(label, block)]
    if block["scorer"]["n_references"] > block["scorer"]["n_dialogues"]:
        blocks += [
            ("first reference", block["first_reference"]),
            ("best reference", block["multi_reference"]),
        ]
    return tables.caption({"scorer": block["scorer"]}) + "\n" + tables.text(tables.block_rows(blocks, lengths=True))


def main(argv: list[str]) -> int:
    from job import rundir

    args = parse_args(argv)
    output = rundir.check_output_file(args.output, args.overwrite) if args.output else None
    preds = read_predictions(args.predictions, args.field)
    if args.data:
        references = references_from_data(args, preds)
    elif preds.references is not None:
        if args.reference_column:
            raise ConfigInputError("--reference-column needs --data: a run's predictions.jsonl holds its references")
        references = preds.references
    else:
        raise ConfigInputError(
            f"--predictions {args.predictions} holds no references: give --data, the data set it summarizes"
        )
    block = score_block(preds.texts, references, *scorer_settings(args.predictions))
    block["source"] = {
        "predictions": str(args.predictions),
        "data": args.data,
        "split": args.split if args.data else None,
        "reference_columns": args.reference_column,
    }
    print(table(block, args.predictions.name), flush=True)
    if output is not None:
        from job.rundir import write_json

        write_json(output, block)
        log.info("wrote %s", output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
