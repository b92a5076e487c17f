"""ROUGE tables from metrics.json: one set of rows, rendered as plain text or markdown.

Rows are lists of strings, the header first, then one row per scored block in the order base (zero-shot),
fine-tuned, then each in-context baseline. Scores are F-measure x 100 with 2 decimals and, where metrics.json has
it, the 95% bootstrap interval: `46.33 (45.30-47.40)`, as report.md shows them. Imports nothing beyond the standard
library, so the launchers use it too.
"""

from __future__ import annotations

from typing import Any

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRIC_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
LABELS = {"base": "base (zero-shot)", "finetuned": "fine-tuned"}
CHANGE_LABEL = "change (fine-tuned - base)"
MISSING = "-"
"""A figure metrics.json does not hold (an older or partial file)."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def score_cell(block: dict[str, Any], metric: str, interval: bool = True) -> str:
    """`46.33 (45.30-47.40)`, or the score alone where the block has no interval for it."""
    value = block.get(metric)
    if not _number(value):
        return MISSING
    ci = (block.get("ci95") or {}).get(metric) if interval else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(x) for x in ci):
        return f"{percent(value)} ({percent(ci[0])}-{percent(ci[1])})"
    return percent(value)


def _fixed(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if _number(value) else MISSING


def scored_blocks(metrics: dict[str, Any], baselines: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(label, block) in table order: base, fine-tuned, then the in-context baselines (`one-shot`, `few-shot`)."""
    found = [(LABELS[key], metrics[key]) for key in ("base", "finetuned") if metrics.get(key)]
    if baselines:
        found += [(name.replace("_", "-"), b) for name, b in (metrics.get("baselines") or {}).items() if b]
    return found


def rouge_rows(
    metrics: dict[str, Any],
    *,
    baselines: bool = True,
    lengths: bool = False,
    multi_reference: bool = False,
    change: bool = False,
) -> list[list[str]]:
    """The header and one row per scored block of a metrics.json.

    lengths: add report.md's `avg words` and `length ratio` columns. multi_reference: the best-reference scores
    (`multi_reference` in each block, which have no interval) instead of the mean over every reference.
    change: a last row with fine-tuned minus base in points, where both were scored."""
    rows = block_rows(scored_blocks(metrics, baselines), lengths=lengths, multi_reference=multi_reference)
    header = rows[0]
    base, tuned = metrics.get("base"), metrics.get("finetuned")
    if change and base and tuned:
        if multi_reference:
            base, tuned = base.get("multi_reference") or {}, tuned.get("multi_reference") or {}
        deltas = [
            f"{100 * (tuned[m] - base[m]):+.2f}" if _number(base.get(m)) and _number(tuned.get(m)) else MISSING
            for m in METRICS
        ]
        rows.append([CHANGE_LABEL, *deltas, *([""] * (len(header) - 1 - len(METRICS)))])
    return rows


def block_rows(
    blocks: list[tuple[str, dict[str, Any]]], *, lengths: bool = False, multi_reference: bool = False
) -> list[list[str]]:
    """The header and one row per (label, scored block): what rouge_rows and `job score` print."""
    header = ["model", *(METRIC_NAMES[m] for m in METRICS)]
    if lengths:
        header += ["avg words", "length ratio"]
    rows = [header]
    for label, block in blocks:
        scores = (block.get("multi_reference") or {}) if multi_reference else block
        row = [label, *(score_cell(scores, m, interval=not multi_reference) for m in METRICS)]
        if lengths:
            row += [_fixed(block.get("avg_words"), 1), _fixed(block.get("length_ratio"), 2)]
        rows.append(row)
    return rows


def text(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, for a terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def markdown(rows: list[list[str]]) -> str:
    """A markdown table: the first row is the header."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0]), *(line(row) for row in rows[1:])])


def html(rows: list[list[str]]) -> str:
    """An HTML table: the first row is the header, every cell escaped."""
    from html import escape

    def line(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells) + "</tr>"

    head = line(rows[0], "th")
    body = "".join(line(row, "td") for row in rows[1:])
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def caption(metrics: dict[str, Any]) -> str:
    """What the figures are, with the size of the test set where metrics.json records it."""
    scorer = metrics.get("scorer") or {}
    size = ""
    if scorer.get("n_dialogues") is not None:
        size = f" on {scorer['n_dialogues']} dialogues ({scorer.get('n_references', '?')} references)"
    return f"ROUGE (F-measure x 100){size}, 95% bootstrap interval in parentheses"


def summary(metrics: dict[str, Any]) -> str:
    """What a launcher prints for a finished run: the caption and the table with the change from base."""
    return caption(metrics) + "\n" + text(rouge_rows(metrics, change=True))
