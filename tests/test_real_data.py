"""DialogSum as its authors released it: split names from any part of a file name, several references per row
(`summary1..3`), `fname` ids, the first reference for training unless data.train_on=all. The fixtures in
tests/data/dialogsum-release/ are built from the built-in set by tests/release_layout.py."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from job import config as C
from job import data
from job.errors import DataError
from tests.conftest import run_job_here
from tests.release_layout import FOLDER, release_files, render

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dialogsum"


def _cfg(dataset, *extra: str):
    return C.resolve("test", [f"data.dataset={dataset}", *extra]).data


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text(render(rows), encoding="utf-8")
    return path


def test_the_committed_fixtures_are_what_the_builder_writes():
    for name, rows in release_files().items():
        assert (FOLDER / name).read_text(encoding="utf-8") == render(rows), name


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("dialogsum.train.jsonl", "train"),
        ("dialogsum.dev.jsonl", "validation"),
        ("dialogsum.test.jsonl", "test"),
        ("my-data.test.csv", "test"),
        ("samsum.validation.parquet", "validation"),
        ("train.jsonl", "train"),
        ("dialogues_valid.json", "validation"),
        ("export-testing.jsonl", "test"),
        ("dialogsum.hiddentest.dialogue.jsonl", None),
        ("dialogues.jsonl", None),
        ("contest.jsonl", None),
    ],
)
def test_split_names_from_any_part_of_the_file_name(name, split):
    assert data._split_of(Path(name)) == split


def test_the_release_folder_loads_with_three_references_per_test_dialogue(caplog):
    with caplog.at_level(logging.INFO, logger="job.data"):
        splits = data.load_splits(_cfg(FOLDER), seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 96, "validation": 8, "test": 8}
    assert splits["test"][0]["id"] == "test_0" and splits["train"][0]["id"] == "train_0"  # fname, as id is absent
    dialogues = data.unique_dialogues(splits["test"], None)
    expected = [json.loads(line) for line in (FOLDER / "dialogsum.test.jsonl").read_text().splitlines()]
    assert [d.references for d in dialogues] == [[r["summary1"], r["summary2"], r["summary3"]] for r in expected]
    assert splits["test"][0]["summary"] == expected[0]["summary1"]
    assert "split 'test' has no 'summary' column: using summary1, summary2, summary3 as its 3 references" in caplog.text


def test_the_hub_layout_and_the_release_layout_give_the_same_dialogues():
    hub = data.unique_dialogues(data.load_splits(_cfg("builtin:synthetic"), seed=1)["test"], 8)
    release = data.unique_dialogues(data.load_splits(_cfg(FOLDER), seed=1)["test"], None)
    assert [(d.dialogue, d.references) for d in hub] == [(d.dialogue, d.references) for d in release]


def test_a_file_named_by_a_split_is_that_split_alone(tmp_path, caplog):
    path = _write(tmp_path / "dialogsum.test.jsonl", release_files()["dialogsum.test.jsonl"])
    with caplog.at_level(logging.INFO, logger="job.data"):
        test = data.load_splits(_cfg(path, "data.train_split=''", "data.eval_split=''"), seed=1)
    assert list(test) == ["test"] and len(test["test"]) == 8  # all of it, not 10%
    assert "dialogsum.test.jsonl is named as the test split: reading it as that split alone" in caplog.text
    with pytest.raises(DataError, match=r"has no 'train' split \(splits: test\); set data\.train_split; a file whose"):
        data.load_splits(_cfg(path), seed=1)


def test_summary_column_takes_a_list(tmp_path):
    rows = release_files()["dialogsum.test.jsonl"]
    for split in ("train", "test"):
        _write(tmp_path / f"{split}.jsonl", rows)
    splits = data.load_splits(_cfg(tmp_path, "data.summary_column=[summary3, summary1]"), seed=1)
    assert splits["test"][0]["references"] == [rows[0]["summary3"], rows[0]["summary1"]]
    assert splits["train"][0]["summary"] == rows[0]["summary3"]
    with pytest.raises(DataError, match=r"split 'train' has no column 'summary4' \(columns: fname, dialogue, summ"):
        data.load_splits(_cfg(tmp_path, "data.summary_column=[summary1, summary4]"), seed=1)


def test_training_uses_the_first_reference_unless_train_on_all(tmp_path):
    rows = release_files()["dialogsum.test.jsonl"]
    for split in ("train", "test"):
        _write(tmp_path / f"{split}.jsonl", rows)
    first = data.load_splits(_cfg(tmp_path), seed=1)["train"]
    assert first["summary"] == [r["summary1"] for r in rows]
    every = data.load_splits(_cfg(tmp_path, "data.train_on=all"), seed=1)["train"]
    assert every["summary"] == [r[f"summary{k}"] for r in rows for k in (1, 2, 3)]
    assert every["id"] == [r["fname"] for r in rows for _ in range(3)]


def test_an_empty_reference_is_left_out_and_a_row_without_any_is_dropped(tmp_path):
    rows = [dict(r) for r in release_files()["dialogsum.test.jsonl"][:3]]
    rows[0]["summary2"] = " "
    rows[1] |= {"summary1": "", "summary2": "", "summary3": ""}
    for split in ("train", "test"):
        _write(tmp_path / f"{split}.jsonl", rows)
    test = data.load_splits(_cfg(tmp_path), seed=1)["test"]
    assert test["id"] == ["test_0", "test_2"]
    assert test[0]["references"] == [rows[0]["summary1"], rows[0]["summary3"]]


def test_the_test_preset_end_to_end_on_the_release_layout(tmp_path):
    """Also: `job data` on the same config reports the cuts the run then reports (training, generation)."""
    short = ["data.max_length=150", "data.max_summary_tokens=30"]  # some examples and prompts are cut, not all
    args = ["--config", "test", f"data.dataset={FOLDER}", *short]
    proc = run_job_here("train", *args, f"output.uri={tmp_path}", "output.run_name=r")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = run_job_here("data", *args)
    assert report.returncode == 0, report.stderr[-4000:]
    cut = json.loads((tmp_path / "r" / "metrics.json").read_text())["train"]["truncated_examples"]
    assert 0 < cut < 96
    assert f"training: {cut} of 96 examples are longer than data.max_length=150" in report.stdout
    said = re.search(r"generation: (\d+) of 6 scored prompts were longer than 120 tokens", proc.stderr)
    assert said, proc.stderr[-3000:]
    assert f"generation: {said[1]} of 6 scored prompts are longer than 120 tokens" in report.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["scorer"]["n_dialogues"] == 6 and metrics["scorer"]["n_references"] == 18
    predictions = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [f"test_{i}" for i in range(6)]
    assert all(len(p["references"]) == 3 for p in predictions)
    for block in ("base", "finetuned"):
        assert set(metrics[block]["first_reference"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert "scoring 6 dialogues with 18 references" in proc.stderr


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"DialogSum's release files are not in {SHARED}")
def test_the_shared_release_files_load():
    test = data.load_splits(_cfg(SHARED / "dialogsum.test.jsonl", "data.train_split=''", "data.eval_split=''"), seed=1)
    dialogues = data.unique_dialogues(test["test"], None)
    assert len(dialogues) == 500 and all(len(d.references) == 3 for d in dialogues)
    assert dialogues[0].id == "test_0"
