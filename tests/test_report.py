"""report.md from a metrics dict shaped as the job writes it, with real ROUGE blocks."""

from __future__ import annotations

from job import report, scoring


def _metrics(loss: float | None, eval_loss: float | None) -> dict:
    preds, refs = ["the cat sat on the mat"], [["the cat was on the mat"]]
    block = {**scoring.score(preds, refs, bootstrap_samples=20), "hit_max_new_tokens": 0}
    return {
        "run": {
            "name": "r1",
            "method": "qlora",
            "model": "builtin:tiny-llama",
            "dataset": "builtin:synthetic",
            "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:01:00+00:00",
            "seconds": 60.0,
        },
        "scorer": scoring.scorer_info(1, 1, 20, 42),
        "generation": {"max_new_tokens": 48},
        "base": block,
        "finetuned": block,
        "train": {
            "loss": loss,
            "eval_loss": eval_loss,
            "steps": 300,
            "epochs": 2.0,
            "trainable_params": 311296,
            "total_params": 998784,
            "tokens_per_second": 11947.41,
            "padding_fraction": 0.0,
            "peak_memory_mb": 709.1,
        },
    }


def _training_line(tmp_path, metrics: dict) -> str:
    path = tmp_path / "report.md"
    report.write_report(path, metrics, [], samples=0)
    return next(line for line in path.read_text().splitlines() if line.startswith("- training:"))


def test_losses_are_shown_to_four_significant_digits(tmp_path):
    line = _training_line(tmp_path, _metrics(4.97672799428304, 4.775774955749512))
    assert "final loss 4.977, best validation loss 4.776," in line
    line = _training_line(tmp_path, _metrics(0.012345678, 12.3456))
    assert "final loss 0.01235, best validation loss 12.35," in line


def test_a_run_without_validation_says_so(tmp_path):
    assert "best validation loss None," in _training_line(tmp_path, _metrics(4.9, None))
