"""Data from files, folders (split by file name), SageMaker channels and the built-in set, normalised to
id/dialogue/summary; unique dialogues with all their references."""

from __future__ import annotations

import json

import pytest

from job import config as C
from job import data
from job.errors import DataError

ROWS = [
    {"key": f"r{i}", "text": f"#Person1#: hello {i}\n#Person2#: hi {i}", "abstract": f"They greet {i}."}
    for i in range(40)
]


def _cfg(dataset: str, *extra: str):
    return C.resolve(
        "test",
        [
            f"data.dataset={dataset}",
            "data.dialogue_column=text",
            "data.summary_column=abstract",
            "data.id_column=key",
            *extra,
        ],
    ).data


def test_one_jsonl_file_is_split_80_10_10(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    splits = data.load_splits(_cfg(str(path)), seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 32, "validation": 4, "test": 4}
    assert set(splits["train"].column_names) == {"id", "dialogue", "summary", "references"}
    assert splits["train"][0]["id"].startswith("r")


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_a_folder_split_by_file_name(tmp_path, fmt):
    import pandas as pd

    for split, chunk in (("train", ROWS[:30]), ("validation", ROWS[30:35]), ("test", ROWS[35:])):
        frame, path = pd.DataFrame(chunk), tmp_path / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path)
        else:
            frame.to_json(path, orient="records", lines=True)
    splits = data.load_splits(_cfg(str(tmp_path)), seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 30, "validation": 5, "test": 5}


def test_a_sagemaker_channel(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:30]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[30:]))
    monkeypatch.setenv("SM_CHANNEL_DIALOGUES", str(tmp_path))
    splits = data.load_splits(_cfg("channel:dialogues"), seed=1)
    assert set(splits) == {"train", "test"}  # no validation file: trains without a validation loss


def test_empty_rows_are_dropped_or_rejected(tmp_path):
    rows = ROWS[:20] + [{"key": "e", "text": "", "abstract": "x"}, {"key": "f", "text": "y", "abstract": "  "}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[20:]))
    assert len(data.load_splits(_cfg(str(tmp_path)), seed=1)["train"]) == 20
    with pytest.raises(DataError, match="2 rows with an empty dialogue or summary"):
        data.load_splits(_cfg(str(tmp_path), "data.empty_rows=error"), seed=1)


def test_missing_column_names_the_columns(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "a", "summary": "b"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "a", "summary": "b"}) + "\n")
    with pytest.raises(DataError, match="no column 'abstract'.*columns: text, summary"):
        data.load_splits(_cfg(str(tmp_path)), seed=1)


def test_builtin_set_groups_references_per_dialogue():
    cfg = C.resolve("test").data
    splits = data.load_splits(cfg, seed=1)
    assert len(splits["train"]) == 1200 and len(splits["test"]) == 180
    dialogues = data.unique_dialogues(splits["test"], None)
    assert len(dialogues) == 60 and all(len(d.references) == 3 for d in dialogues)
    assert [d.id for d in data.unique_dialogues(splits["test"], 2)] == ["test_0_1", "test_1_1"]


def test_shipped_synthetic_set_is_what_the_generator_writes():
    from job.synthetic import BUILTIN_DIR, generate

    for split, rows in generate().items():
        shipped = [json.loads(line) for line in (BUILTIN_DIR / f"{split}.jsonl").read_text().splitlines()]
        assert shipped == rows, split


def test_cap_is_a_seeded_sample():
    splits = data.load_splits(C.resolve("test").data, seed=1)
    a, b = data.cap(splits["train"], 10, 3), data.cap(splits["train"], 10, 3)
    assert a["id"] == b["id"] and len(a) == 10 and a["id"] != splits["train"]["id"][:10]
