"""Published reference figures in the report and `compare`, shown only next to runs scored the same way."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from job import cli, published
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data" / "dialogsum"
needs_release = pytest.mark.skipif(
    not (SHARED / "bart-large-baseline.test.txt").is_file(), reason=f"DialogSum's release files are not in {SHARED}"
)


def quiet(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def baseline_block(tmp_path_factory) -> dict:
    """The release's BART-large outputs scored by `job score` against all three references, as a run scores."""
    out = tmp_path_factory.mktemp("score") / "bart.json"
    code, _, err = quiet(
        [
            "score",
            "--predictions",
            str(SHARED / "bart-large-baseline.test.txt"),
            "--data",
            str(SHARED / "dialogsum.test.jsonl"),
            "--output",
            str(out),
        ]
    )
    assert code == 0, err
    return json.loads(out.read_text())


def as_run(metrics: dict, block: dict, dataset: str) -> dict:
    """A finished run's metrics.json with its scored blocks replaced by `block` (the test's input, said so)."""
    scorer = block["scorer"]
    scores = {k: v for k, v in block.items() if k not in ("scorer", "source")}
    return {
        **metrics,
        "run": {**metrics["run"], "dataset": dataset},
        "scorer": scorer,
        "finetuned": scores,
        "base": None,
    }


@needs_release
def test_the_published_baseline_stands_next_to_outputs_scored_the_same_way(trained_run, baseline_block):
    metrics = as_run(json.loads((trained_run.dir / "metrics.json").read_text()), baseline_block, "knkarthick/dialogsum")
    assert published.comparable(metrics) == list(published.PUBLISHED)
    rows = published.rows(metrics)
    assert rows[1][:4] == ["fine-tuned (first reference)", "45.91", "21.32", "38.71"]
    assert rows[2][:4] == ["BART-large (DialogSum baseline, published)", "45.95", "21.36", "38.72"]


def test_a_run_scored_another_way_shows_none_and_says_why(trained_run):
    metrics = json.loads((trained_run.dir / "metrics.json").read_text())
    assert published.comparable(metrics) == []
    why = published.why_not(published.PUBLISHED[0], metrics)
    assert "not DialogSum" in why
    on_dialogsum = {**metrics, "run": {**metrics["run"], "dataset": "knkarthick/dialogsum"}}
    assert "scored 6 dialogues with 18 references, not the whole test split" in published.why_not(
        published.PUBLISHED[0], on_dialogsum
    )
    report = (trained_run.dir / "report.md").read_text()
    assert "## Published figures\n\nNone shown: none was scored the same way as this run (BART-large" in report


@needs_release
def test_compare_shows_the_published_rows_only_next_to_comparable_runs(trained_run, baseline_block, tmp_path):
    comparable = tmp_path / "bart-as-run"
    shutil.copytree(trained_run.dir, comparable)
    metrics = json.loads((comparable / "metrics.json").read_text())
    metrics = as_run(metrics, baseline_block, "/data/dialogsum")
    metrics["run"]["name"] = "bart-as-run"
    (comparable / "metrics.json").write_text(json.dumps(metrics))
    code, out, err = quiet(["compare", str(comparable), str(trained_run.dir), "--out", str(tmp_path / "cmp")])
    assert code == 0, err
    assert "Published figures, next to the runs scored the same way:" in out
    assert "| bart-as-run: fine-tuned (first reference) | 45.91 | 21.32 | 38.71 |" in out
    assert "| BART-large (DialogSum baseline, published) | 45.95 | 21.36 | 38.72 | - |" in out
    assert "shared: fine-tuned (first reference)" not in out
    assert "summary1) alone with rouge_score, stemming on, ROUGE-L as rougeL" in out
    code, out, err = quiet(["compare", str(trained_run.dir), "--out", str(tmp_path / "cmp2")])
    assert code == 0 and "Published figures" not in out
