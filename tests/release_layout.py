"""Tiny fixtures in the layout of DialogSum as its authors released it (`cylnlp/dialogsum`), built from the job's
built-in synthetic set: `dialogsum.{train,dev,test}.jsonl` with ids in `fname`, the test split with one row per
dialogue and its references in `summary1..3` (`topic1..3`), and an unlabelled `dialogsum.hiddentest.dialogue.jsonl`.

`python -m tests.release_layout` writes them to tests/data/dialogsum-release/; a test checks that the committed files
are what this writes."""

from __future__ import annotations

import json
from pathlib import Path

from job.synthetic import BUILTIN_DIR

FOLDER = Path(__file__).parent / "data" / "dialogsum-release"
SIZES = {"train": 96, "dev": 8, "test": 8, "hiddentest.dialogue": 2}
"""Rows per file: what the `test` preset trains on (96), validates on (8), scores (its 6 dialogues, and 2 more)."""


def _builtin(split: str) -> list[dict]:
    return [json.loads(line) for line in (BUILTIN_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def release_files() -> dict[str, list[dict]]:
    """File name -> rows, in the release's column order."""
    single = {
        name: [
            {"fname": f"{name}_{i}", "dialogue": r["dialogue"], "summary": r["summary"], "topic": r["topic"]}
            for i, r in enumerate(_builtin(split)[: SIZES[name]])
        ]
        for name, split in (("train", "train"), ("dev", "validation"))
    }
    grouped: dict[str, list[dict]] = {}
    for row in _builtin("test"):  # the Hub layout: one row per reference
        grouped.setdefault(row["dialogue"], []).append(row)
    test, hidden = [], []
    for i, rows in enumerate(list(grouped.values())[: SIZES["test"]]):
        line = {"fname": f"test_{i}", "dialogue": rows[0]["dialogue"]}
        for k, r in enumerate(rows, 1):
            line |= {f"summary{k}": r["summary"], f"topic{k}": r["topic"]}
        test.append(line)
    for i, rows in enumerate(list(grouped.values())[SIZES["test"] : SIZES["test"] + SIZES["hiddentest.dialogue"]]):
        hidden.append({"fname": f"hiddentest_{i}", "dialogue": rows[0]["dialogue"]})
    files = {f"dialogsum.{name}.jsonl": rows for name, rows in single.items()}
    files["dialogsum.test.jsonl"] = test
    files["dialogsum.hiddentest.dialogue.jsonl"] = hidden
    return files


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, rows in release_files().items():
        (FOLDER / name).write_text(render(rows), encoding="utf-8")
        print(FOLDER / name, len(rows))
