"""`python -m job data --config NAME [key=value ...]`: the data a run would train and score on, before paying for it.

Loads the data and the model's tokenizer only (no weights): rows per split, references per scored dialogue, empty
rows dropped, token-length quantiles of training examples, prompts and summaries in the model's own prompt format,
how many training examples data.max_length cuts and how many scored prompts generation cuts. The counts come from
the functions training and generation use (data.load_splits, prompts.encode_example, prompts.fit_prompt), on the
same rows (the same caps and seed), so they are what the run then reports.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from job import cli, tables
from job.config import Config

log = logging.getLogger("job.datareport")

QUANTILES = (50, 90, 99)


def parse_args(argv: list[str]):
    parser = cli.config_parser(
        "python -m job data",
        "Report the data a run would use with the model's tokenizer (no model weights): rows per split, "
        "references per dialogue, empty rows dropped, token lengths of prompts and summaries, and how many "
        "training examples and scored prompts are cut.",
    )
    return parser.parse_known_args(argv)


def main(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    cfg = cli.resolve_config(args.config, overrides)
    print(render(build(cfg)), flush=True)
    return 0


def load_tokenizer(cfg: Config) -> tuple[Any, bool]:
    """The model's tokenizer and whether the model is encoder-decoder, reading no weights (config.json at most)."""
    from job import builtin

    if builtin.is_builtin(cfg.model.name):
        enc_dec = cfg.model.name == "builtin:tiny-t5"
        return builtin.load_tokenizer(encoder_decoder=enc_dec), enc_dec
    from job import modeling, runtime
    from job.errors import ConfigInputError

    path = str(runtime.channel_path(cfg.model.name) or cfg.model.name)
    try:
        return modeling.load_tokenizer(path, cfg), modeling.is_encoder_decoder(path, cfg)
    except (OSError, ValueError) as e:
        first = str(e).strip().split("\n")[0]
        raise ConfigInputError(
            f"model.name={path}: cannot load its tokenizer here ({type(e).__name__}: {first}); check model.name, "
            f"and the network or the Hugging Face cache"
        ) from None


def quantiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    arr = np.array(values)
    return {**{f"p{q}": int(np.percentile(arr, q)) for q in QUANTILES}, "max": int(arr.max())}


def build(cfg: Config) -> dict[str, Any]:
    """The report as a dict (what `render` prints and the launchers' --dry-run shows)."""
    from job import data, prompts, train

    dropped: dict[str, int] = {}
    splits = data.load_splits(cfg.data, cfg.train.seed, dropped=dropped)
    rows = {name: len(ds) for name, ds in splits.items()}
    # the rows a run uses: the same caps, seed and scored split as train.run
    used = {"train": data.cap(splits["train"], cfg.data.max_train_examples, cfg.train.seed)}
    if "validation" in splits:
        used["validation"] = data.cap(splits["validation"], cfg.data.max_eval_examples, cfg.train.seed)
    scored_split = splits["test"] if cfg.eval.split in (None, cfg.data.test_split) else train._extra_split(cfg)
    dialogues = data.unique_dialogues(scored_split, cfg.eval.num_dialogues)
    all_dialogues = data.unique_dialogues(scored_split, None)

    tokenizer, enc_dec = load_tokenizer(cfg)
    examples, prompt_lengths, summary_lengths, cut_examples = [], [], [], 0
    for row in used["train"]:
        enc = prompts.encode_example(tokenizer, cfg.data, row["dialogue"], row["summary"], enc_dec)
        examples.append(len(enc.input_ids))
        cut_examples += enc.truncated
        prompt_lengths.append(len(prompts.fit_prompt(tokenizer, cfg.data, row["dialogue"], 10**9)[0]))
        target = row["summary"] if enc_dec else prompts.target_text(tokenizer, cfg.data, row["summary"])
        summary_lengths.append(len(tokenizer(target, add_special_tokens=False)["input_ids"]))
    budget = prompts.prompt_budget(cfg.data, enc_dec)
    scored_lengths, cut_prompts = [], 0
    for d in dialogues:
        scored_lengths.append(len(prompts.fit_prompt(tokenizer, cfg.data, d.dialogue, 10**9)[0]))
        cut_prompts += prompts.fit_prompt(tokenizer, cfg.data, d.dialogue, budget)[1]
    references = [len(d.references) for d in dialogues]
    return {
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "chat_template": prompts.uses_chat_template(tokenizer, cfg.data),
        "rows": rows,
        "empty_rows_dropped": {name: dropped.get(name, 0) for name in rows},
        "used": {name: len(ds) for name, ds in used.items()},
        "scored": {
            "split": cfg.eval.split or cfg.data.test_split,
            "dialogues": len(dialogues),
            "dialogues_in_split": len(all_dialogues),
            "references": sum(references),
            "references_per_dialogue": {"min": min(references), "max": max(references)},
        },
        "tokens": {
            "training_examples": quantiles(examples),
            "prompts": quantiles(prompt_lengths),
            "summaries": quantiles(summary_lengths),
            "scored_prompts": quantiles(scored_lengths),
        },
        "truncated": {
            "training_examples": cut_examples,
            "max_length": cfg.data.max_length,
            "scored_prompts": cut_prompts,
            "generation_prompt_budget": budget,
        },
    }


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    fmt = "chat template" if report["chat_template"] else "plain prompt"
    lines = [f"data report: {report['dataset']} (tokenizer of {report['model']}, {fmt})", ""]
    table = [["split", "rows", "empty rows dropped", "used"]]
    scored = report["scored"]
    for name, n in report["rows"].items():
        use = str(report["used"].get(name, ""))
        if name == "test" or name == scored["split"]:
            use = f"{scored['dialogues']} of {scored['dialogues_in_split']} dialogues scored"
        table.append([name, str(n), str(report["empty_rows_dropped"][name]), use])
    refs = scored["references_per_dialogue"]
    per = str(refs["min"]) if refs["min"] == refs["max"] else f"{refs['min']}-{refs['max']}"
    lines += [tables.text(table), "", f"references per scored dialogue: {per} ({scored['references']} in all)", ""]
    tokens = [["tokens", *(f"p{q}" for q in QUANTILES), "max"]]
    labels = {
        "training_examples": "training examples",
        "prompts": "training prompts",
        "summaries": "training summaries",
        "scored_prompts": "scored prompts",
    }
    for key, label in labels.items():
        q = report["tokens"][key]
        tokens.append([label, *(str(q.get(f"p{p}", "-")) for p in QUANTILES), str(q.get("max", "-"))])
    cut = report["truncated"]
    lines += [
        tables.text(tokens),
        "",
        f"training: {cut['training_examples']} of {report['used']['train']} examples are longer than "
        f"data.max_length={cut['max_length']}; their dialogues are cut (never the summary)",
        f"generation: {cut['scored_prompts']} of {scored['dialogues']} scored prompts are longer than "
        f"{cut['generation_prompt_budget']} tokens; their dialogues are cut",
    ]
    return "\n".join(lines)
