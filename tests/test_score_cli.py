"""`python -m job score`: the job's scorer on any predictions, through the real command line (`job.cli.main`).
Reproduces the published BART-large baseline from DialogSum's release files where they are present (they are never
copied into the project), and a finished run's own metrics from its predictions.jsonl."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from job import cli
from tests.conftest import REPO, job_env
from tests.release_layout import FOLDER

SHARED = REPO.parent / "shared" / "data" / "dialogsum"
RELEASE_TEST = FOLDER / "dialogsum.test.jsonl"
TEST_ROWS = [json.loads(line) for line in RELEASE_TEST.read_text().splitlines()]


def score(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["score", *args])
    return code, out.getvalue(), err.getvalue()


def row_of(stdout: str, label: str) -> list[float]:
    """ROUGE-1, -2, -L, -Lsum of the printed row that starts with `label`."""
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    return [float(x) for x in re.findall(r"(?<![(-])\b\d+\.\d\d\b(?![)-])", line[len(label) :])[:4]]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.skipif(
    not (SHARED / "bart-large-baseline.test.txt").is_file(), reason=f"DialogSum's release files are not in {SHARED}"
)
def test_reproduces_the_published_bart_large_baseline(tmp_path):
    code, out, err = score(
        "--predictions",
        str(SHARED / "bart-large-baseline.test.txt"),
        "--data",
        str(SHARED / "dialogsum.test.jsonl"),
        "--reference-column",
        "summary1",
        "--output",
        str(tmp_path / "bart.json"),
    )
    assert code == 0, err
    r1, r2, rl, _ = row_of(out, "bart-large-baseline.test.txt")
    assert abs(r1 - 45.95) <= 0.1 and abs(r2 - 21.36) <= 0.1 and abs(rl - 38.72) <= 0.1, out
    assert "on 500 dialogues (500 references)" in out
    block = json.loads((tmp_path / "bart.json").read_text())
    assert round(100 * block["rougeL"], 2) == rl and block["first_reference"]["rougeL"] == block["rougeL"]
    assert block["scorer"]["use_stemmer"] is True and block["scorer"]["n_references"] == 500
    assert block["source"]["reference_columns"] == ["summary1"]


@pytest.mark.skipif(not (SHARED / "dialogsum.test.jsonl").is_file(), reason=f"no release files in {SHARED}")
def test_the_baseline_against_all_three_references():
    code, out, err = score(
        "--predictions", str(SHARED / "bart-large-baseline.test.txt"), "--data", str(SHARED / "dialogsum.test.jsonl")
    )
    assert code == 0, err
    assert "on 500 dialogues (1500 references)" in out  # summary1..3, found without being named
    mean, first, best = (row_of(out, label) for label in ("bart-large", "first reference", "best reference"))
    assert abs(first[0] - 45.91) <= 0.01 and abs(mean[0] - 45.05) <= 0.01 and abs(best[0] - 53.65) <= 0.01, out


def test_the_references_themselves_score_100_against_the_first(tmp_path):
    preds = write_lines(tmp_path / "preds.txt", [r["summary1"] for r in TEST_ROWS])
    code, out, err = score("--predictions", str(preds), "--data", str(RELEASE_TEST), "--output", str(tmp_path / "o"))
    assert code == 0, err
    block = json.loads((tmp_path / "o").read_text())
    assert block["first_reference"]["rouge1"] == pytest.approx(1.0) and block["rouge1"] < 0.9
    assert block["scorer"]["n_dialogues"] == 8 and block["scorer"]["n_references"] == 24
    assert row_of(out, "first reference")[:3] == [100.0, 100.0, 100.0]


def test_jsonl_by_id_in_any_order_scores_like_the_text_file_in_order(tmp_path):
    texts = [r["summary2"] for r in TEST_ROWS]
    by_line = write_lines(tmp_path / "p.txt", texts)
    by_id = write_lines(
        tmp_path / "p.jsonl",
        [json.dumps({"id": r["fname"], "summary": t}) for r, t in reversed(list(zip(TEST_ROWS, texts)))],
    )
    blocks = []
    for preds in (by_line, by_id):
        out = tmp_path / f"{preds.name}.json"
        assert score("--predictions", str(preds), "--data", str(FOLDER), "--output", str(out))[0] == 0
        blocks.append(json.loads(out.read_text()))
    for m in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert blocks[0][m] == pytest.approx(blocks[1][m])
        assert blocks[0]["first_reference"][m] == pytest.approx(blocks[1]["first_reference"][m])


def test_hub_layout_ids_name_their_dialogue(tmp_path):
    """The Hub layout repeats each test dialogue per reference (test_0_1, test_0_2, ...): any of its ids names it."""
    hub = [json.loads(line) for line in (REPO / "job/builtin/test.jsonl").read_text().splitlines()][:9]
    data = write_lines(tmp_path / "test.jsonl", [json.dumps(r) for r in hub])
    preds = write_lines(tmp_path / "p.jsonl", [json.dumps({"id": f"test_{i}_2", "summary": "x"}) for i in range(3)])
    code, out, err = score("--predictions", str(preds), "--data", str(data))
    assert code == 0, err
    assert "on 3 dialogues (9 references)" in out


def test_a_runs_predictions_score_as_the_run_scored_them(trained_run, tmp_path):
    code, out, err = score("--predictions", str(trained_run.dir / "predictions.jsonl"), "--output", str(tmp_path / "o"))
    assert code == 0, err
    metrics = json.loads((trained_run.dir / "metrics.json").read_text())
    block = json.loads((tmp_path / "o").read_text())
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum", "multi_reference", "first_reference", "ci95", "avg_words"):
        assert block[key] == metrics["finetuned"][key], key
    assert block["scorer"] == metrics["scorer"]
    code, out, err = score("--predictions", str(trained_run.dir / "predictions.jsonl"), "--field", "base")
    assert code == 0 and row_of(out, "predictions.jsonl")[0] == round(100 * metrics["base"]["rouge1"], 2)


def test_output_is_never_written_into_a_complete_run_nor_over_a_file(trained_run, tmp_path):
    preds = str(trained_run.dir / "predictions.jsonl")
    metrics = trained_run.dir / "metrics.json"
    before = metrics.read_bytes()
    code, _, err = score("--predictions", preds, "--output", str(metrics), "--overwrite")
    assert code == 5 and "is inside the complete run folder" in err and metrics.read_bytes() == before
    kept = tmp_path / "kept.json"
    kept.write_text("mine")
    code, _, err = score("--predictions", preds, "--output", str(kept))
    assert code == 5 and "exists and is kept; choose another file or add --overwrite" in err
    assert kept.read_text() == "mine"
    assert score("--predictions", preds, "--output", str(kept), "--overwrite")[0] == 0
    assert json.loads(kept.read_text())["scorer"]["name"] == "rouge_score"


def test_score_imports_no_torch(tmp_path):
    preds = write_lines(tmp_path / "preds.txt", [r["summary3"] for r in TEST_ROWS])
    code = (
        "import sys; from job import cli; "
        f"assert cli.main(['score', '--predictions', {str(preds)!r}, '--data', {str(RELEASE_TEST)!r}]) == 0; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'a model library was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=job_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
