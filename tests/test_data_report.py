"""`python -m job data`: the data report with the tokenizer only, through the real command line; its cut counts are
those of the functions training (training.tokenize) and generation use, on the same rows. tests/test_real_data.py
checks them against a finished run's metrics.json and log."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from job import cli, data, datareport, prompts, training
from job import config as C
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data" / "dialogsum"
SHORT = ["data.max_length=150", "data.max_summary_tokens=30"]
"""Short enough that some, not all, smoke examples and prompts are cut."""


def run_data(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["data", *args])
    return code, out.getvalue(), err.getvalue()


def test_the_smoke_preset_report():
    code, out, err = run_data("--config", "smoke")
    assert code == 0, err
    assert re.search(r"^train\s+1200\s+0\s+1200$", out, re.M), out
    assert re.search(r"^validation\s+60\s+0\s+40$", out, re.M), out
    assert re.search(r"^test\s+180\s+0\s+40 of 60 dialogues scored$", out, re.M), out
    assert "references per scored dialogue: 3 (120 in all)" in out
    assert re.search(r"^training prompts\s+\d+\s+\d+\s+\d+\s+\d+$", out, re.M), out
    assert "training: 0 of 1200 examples are longer than data.max_length=384" in out
    assert "generation: 0 of 40 scored prompts are longer than 288 tokens" in out


def test_cut_counts_are_what_training_and_generation_cut():
    cfg = C.resolve("smoke", SHORT)
    report = datareport.build(cfg)
    splits = data.load_splits(cfg.data, cfg.train.seed)
    tokenizer, enc_dec = datareport.load_tokenizer(cfg)
    _, truncated = training.tokenize(splits["train"], tokenizer, cfg, "tokenizing train", enc_dec)
    assert 0 < report["truncated"]["training_examples"] == truncated < 1200
    budget = prompts.prompt_budget(cfg.data, enc_dec)
    assert budget == 150 - 30 == report["truncated"]["generation_prompt_budget"]
    dialogues = data.unique_dialogues(splits["test"], cfg.eval.num_dialogues)
    cut = [len(prompts.prompt_ids_for_generation(tokenizer, cfg.data, d.dialogue, 10**9)) > budget for d in dialogues]
    assert 0 < report["truncated"]["scored_prompts"] == sum(cut) < 40
    q = report["tokens"]["training_examples"]
    assert q["p50"] <= q["p90"] <= q["p99"] <= q["max"] <= 150


def test_empty_rows_dropped_are_counted(tmp_path):
    rows = [f'{{"id": "{i}", "dialogue": "#Person1#: Hi {i}.", "summary": "A greeting."}}' for i in range(4)]
    (tmp_path / "train.jsonl").write_text("\n".join([*rows, '{"id": "e", "dialogue": "", "summary": "x"}']) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(rows) + "\n")
    code, out, err = run_data("--config", "test", f"data.dataset={tmp_path}")
    assert code == 0, err
    assert re.search(r"^train\s+4\s+1\s+4$", out, re.M), out


@pytest.mark.skipif(not (SHARED / "dialogsum.test.jsonl").is_file(), reason=f"no DialogSum release files in {SHARED}")
def test_the_report_on_the_release_files():
    code, out, err = run_data(
        "--config", "smoke", f"data.dataset={SHARED}", "data.train_split=validation", "eval.num_dialogues=null"
    )
    assert code == 0, err
    assert re.search(r"^test\s+500\s+0\s+500 of 500 dialogues scored$", out, re.M), out
    assert "references per scored dialogue: 3 (1500 in all)" in out
    assert re.search(r"training: [1-9]\d* of 500 examples are longer than data\.max_length=384", out), out


def test_a_data_set_without_a_train_split_is_one_line(tmp_path):
    (tmp_path / "dialogsum.dev.jsonl").write_text('{"fname": "d", "dialogue": "a", "summary": "b"}\n')
    code, _, err = run_data("--config", "smoke", f"data.dataset={tmp_path}")
    assert code == 3 and "has no 'train' split (splits: validation); set data.train_split" in err
