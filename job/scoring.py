"""ROUGE on generated summaries with Google's `rouge_score` (offline; `evaluate.load("rouge")` needs the Hub).

Choices that move ROUGE by points, fixed and recorded in metrics.json: stemming on; rougeLsum over sentences split by
a regex (no download needed) and joined by newlines; the headline figure is the mean over every dialogue-reference
pair (what published DialogSum work quotes); `multi_reference` keeps the best reference per dialogue;
`first_reference` scores against each dialogue's first reference alone (what single-reference figures, such as the
release's BART-large baseline against `summary1`, can be compared with); 95% intervals from a seeded bootstrap over
dialogues.
"""

from __future__ import annotations

import re
from importlib.metadata import version

import numpy as np

from job.tables import METRICS

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9#])")


def split_sentences(text: str) -> str:
    """One sentence per line for rougeLsum: split after . ! ? followed by space and a capital, digit or tag."""
    lines = []
    for line in text.strip().splitlines():
        lines += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return "\n".join(lines)


def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)


def pair_scores(predictions: list[str], references: list[list[str]]) -> list[list[dict[str, float]]]:
    """F-measure of every (prediction, reference) pair: result[dialogue][reference][metric]."""
    scorer = _scorer()
    out = []
    for pred, refs in zip(predictions, references, strict=True):
        p = split_sentences(pred)
        out.append([{m: s.fmeasure for m, s in scorer.score(split_sentences(r), p).items()} for r in refs])
    return out


def _per_dialogue(pairs: list[list[dict[str, float]]], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sums = np.array([sum(p[metric] for p in d) for d in pairs])
    counts = np.array([len(d) for d in pairs])
    best = np.array([max(p[metric] for p in d) for d in pairs])
    return sums, counts, best


def score(predictions: list[str], references: list[list[str]], bootstrap_samples: int = 1000, seed: int = 42) -> dict:
    """The `base`/`finetuned` block of metrics.json for one set of predictions."""
    pairs = pair_scores(predictions, references)
    rng = np.random.default_rng(seed)
    n = len(pairs)
    draws = rng.integers(0, n, size=(bootstrap_samples, n))
    result: dict = {}
    multi: dict = {}
    first: dict = {}
    ci: dict = {}
    for m in METRICS:
        sums, counts, best = _per_dialogue(pairs, m)
        result[m] = float(sums.sum() / counts.sum())
        multi[m] = float(best.mean())
        first[m] = float(np.mean([d[0][m] for d in pairs]))
        boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
        ci[m] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    pred_words = np.array([len(p.split()) for p in predictions])
    ref_words = np.array([np.mean([len(r.split()) for r in refs]) for refs in references])
    result["multi_reference"] = multi
    result["first_reference"] = first
    result["ci95"] = ci
    result["avg_words"] = float(pred_words.mean()) if n else 0.0
    result["length_ratio"] = float(pred_words.sum() / max(ref_words.sum(), 1))
    return result


def scorer_info(n_dialogues: int, n_references: int, bootstrap_samples: int, seed: int) -> dict:
    return {
        "name": "rouge_score",
        "version": version("rouge-score"),
        "use_stemmer": True,
        "rougeLsum_sentence_split": "regex: after . ! ? followed by whitespace and a capital, digit or #; newline-joined",
        "aggregation": "mean over every dialogue-reference pair; multi_reference: best reference per dialogue; "
        "first_reference: the first reference of each dialogue alone; "
        f"ci95: percentile bootstrap over dialogues, {bootstrap_samples} samples, seed {seed}",
        "n_dialogues": n_dialogues,
        "n_references": n_references,
    }
