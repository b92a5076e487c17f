"""Length statistics of real DialogSum for the launchers' time and cost estimates, computed once from the release's
dev and test files (`../shared/data/dialogsum/`, never copied into the project) and committed as
launch/dialogsum_lengths.json: statistics only, not the data.

    python -m benchmarks.dialogsum_lengths [FOLDER]

Words are counted as whitespace-separated tokens; a training example is a dialogue with its first reference.
Token counts are estimated from words with DialogSum's measured sub-word ratio (1.3-1.4 tokens a word for
Llama-3-class tokenizers; 1.35 here) plus the prompt's own tokens with Llama-3.x's chat template, because the
launchers load no tokenizer (`python -m job data` reports the exact figures with the model's tokenizer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dialogsum"
OUTPUT = Path(__file__).resolve().parents[1] / "launch" / "dialogsum_lengths.json"
FILES = ("dialogsum.dev.jsonl", "dialogsum.test.jsonl")
TOKENS_PER_WORD = 1.35
PROMPT_TOKENS = 45
"""Llama-3.x chat template with its dated system header (~25), the instruction and `Summary:` (~12), the
assistant header and EOS (~8)."""
MIDPOINTS = [i + 0.5 for i in range(100)]
"""Percentiles 0.5, 1.5, ... 99.5: each stands for 1% of the examples, so their mean is the mean length and the mean
of each capped at a max_length the mean length after cutting."""


def _quantiles(values: list[int]) -> dict[str, int]:
    arr = np.array(values)
    return {**{f"p{q}": int(round(np.percentile(arr, q))) for q in (50, 90, 99)}, "max": int(arr.max())}


def statistics(folder: Path = FOLDER) -> dict:
    dialogues, summaries, examples = [], [], []
    for name in FILES:
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            first = row.get("summary", row.get("summary1", ""))
            d, s = len(row["dialogue"].split()), len(first.split())
            dialogues.append(d)
            summaries.append(s)
            examples.append(round((d + s) * TOKENS_PER_WORD) + PROMPT_TOKENS)
    return {
        "source": "cylnlp/dialogsum " + " + ".join(FILES) + " (commit 848cc8c); statistics only, not the data",
        "rows": len(examples),
        "words": {"dialogue": _quantiles(dialogues), "summary": _quantiles(summaries)},
        "tokens_per_word": TOKENS_PER_WORD,
        "prompt_tokens": PROMPT_TOKENS,
        "example_tokens": _quantiles(examples),
        "example_tokens_mean": round(float(np.mean(examples)), 1),
        "example_tokens_percentiles": [round(float(np.percentile(examples, q)), 1) for q in MIDPOINTS],
    }


if __name__ == "__main__":
    stats = statistics(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER)
    OUTPUT.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(OUTPUT, stats["example_tokens_mean"], stats["example_tokens"]["p50"], stats["example_tokens"]["max"])
