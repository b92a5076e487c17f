"""job.tables: the one ROUGE table renderer, checked against report.md as job.report writes it and against the blocks
job.scoring really produces."""

from __future__ import annotations

import pytest

from job import report, scoring, tables

REFERENCES = [
    ["#Person1# asks #Person2# to lunch.", "They plan lunch together."],
    ["#Person2# lost the keys and #Person1# helps look.", "Keys are lost; they search."],
    ["The two talk about the weather.", "They discuss rain tomorrow."],
    ["#Person1# books a table for two at seven.", "A dinner booking is made."],
]
BASE = ["Lunch.", "Someone lost something.", "Weather talk.", "A booking."]
TUNED = [
    "#Person1# invites #Person2# to lunch.",
    "#Person2# lost the keys; #Person1# helps.",
    "They talk about rain tomorrow.",
    "#Person1# books a table at seven.",
]


@pytest.fixture(scope="module")
def metrics() -> dict:
    """A metrics.json as job.train writes it, with ROUGE blocks from the real scorer."""
    blocks = {
        name: scoring.score(texts, REFERENCES, bootstrap_samples=200)
        for name, texts in (("base", BASE), ("finetuned", TUNED))
    }
    for block in blocks.values():
        block["hit_max_new_tokens"] = 0
    return {
        "run": {
            "name": "r1",
            "method": "qlora",
            "model": "builtin:tiny-llama",
            "dataset": "builtin",
            "started_at": "2026-12-01T10:00:00",
            "finished_at": "2026-12-01T10:05:00",
            "seconds": 300.0,
        },
        "scorer": scoring.scorer_info(len(REFERENCES), sum(map(len, REFERENCES)), 200, 42),
        "generation": {"max_new_tokens": 64},
        "train": {
            "trainable_params": 1000,
            "total_params": 100000,
            "steps": 12,
            "epochs": 1.0,
            "loss": 4.9,
            "eval_loss": 5.1,
            "tokens_per_second": 900.0,
            "padding_fraction": 0.1,
            "peak_memory_mb": 512.0,
        },
        **blocks,
        "baselines": {"one_shot": scoring.score(BASE[::-1], REFERENCES, bootstrap_samples=200)},
    }


def report_tables(metrics: dict, tmp_path) -> list[str]:
    """The markdown tables of report.md as job.report writes it, each as one string."""
    path = tmp_path / "report.md"
    report.write_report(path, metrics, predictions=[], samples=0)
    found, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    return found


def test_report_md_tables_keep_their_format(metrics, tmp_path):
    """report.md's two ROUGE tables come from the shared rows, in the format report.md has always had."""
    main, best_reference = (table.splitlines() for table in report_tables(metrics, tmp_path))
    block, multi = metrics["finetuned"], metrics["finetuned"]["multi_reference"]

    def cell(m: str) -> str:
        low, high = block["ci95"][m]
        return f"{100 * block[m]:.2f} ({100 * low:.2f}-{100 * high:.2f})"

    assert main[:2] == [
        "| model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | avg words | length ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    assert [row.split(" | ")[0] for row in main[2:]] == ["| base (zero-shot)", "| fine-tuned"]
    lengths = f" | {block['avg_words']:.1f} | {block['length_ratio']:.2f} |"
    assert main[3] == "| fine-tuned | " + " | ".join(cell(m) for m in tables.METRICS) + lengths
    assert best_reference[0] == "| model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum |"
    assert best_reference[3] == "| fine-tuned | " + " | ".join(f"{100 * multi[m]:.2f}" for m in tables.METRICS) + " |"


def test_rows_hold_every_block_in_percent_with_intervals(metrics):
    header, base, tuned, one_shot = tables.rouge_rows(metrics)
    assert header == ["model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum"]
    assert [base[0], tuned[0], one_shot[0]] == ["base (zero-shot)", "fine-tuned", "one-shot"]
    block = metrics["finetuned"]
    low, high = block["ci95"]["rouge1"]
    assert tuned[1] == f"{100 * block['rouge1']:.2f} ({100 * low:.2f}-{100 * high:.2f})"
    assert 0 < block["rouge1"] < 1 and float(tuned[1].split()[0]) == pytest.approx(100 * block["rouge1"], abs=0.005)


def test_launcher_summary_is_the_text_table_with_the_change():
    metrics = {
        "scorer": {"n_dialogues": 6, "n_references": 18},
        "base": {"rouge1": 0.2512, "rouge2": 0.0811, "rougeL": 0.2013, "ci95": {"rouge1": [0.24, 0.26]}},
        "finetuned": {"rouge1": 0.4633, "rouge2": 0.2105, "rougeL": 0.3811, "rougeLsum": 0.3902},
    }
    lines = tables.summary(metrics).splitlines()
    assert lines[0] == "ROUGE (F-measure x 100) on 6 dialogues (18 references), 95% bootstrap interval in parentheses"
    assert lines[1:] == [
        "model                       ROUGE-1              ROUGE-2  ROUGE-L  ROUGE-Lsum",
        "base (zero-shot)            25.12 (24.00-26.00)  8.11     20.13    -",
        "fine-tuned                  46.33                21.05    38.11    39.02",
        "change (fine-tuned - base)  +21.21               +12.94   +17.98   -",
    ]


def test_a_run_without_a_base_score_has_no_change_row():
    rows = tables.rouge_rows({"finetuned": {"rouge1": 0.5}}, change=True)
    assert [row[0] for row in rows] == ["model", "fine-tuned"]
    assert rows[1] == ["fine-tuned", "50.00", "-", "-", "-"]
    assert tables.caption({}) == "ROUGE (F-measure x 100), 95% bootstrap interval in parentheses"


def test_markdown_escapes_pipes():
    assert tables.markdown([["a|b"], ["c"]]) == "| a\\|b |\n|---|\n| c |"
