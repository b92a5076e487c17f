"""DialogSum-like examples: dialogue and summary lengths drawn to follow DialogSum's statistics, deterministically.

What matters for speed is the length distribution, not the words: padding waste and packing gains depend on how
long examples are relative to the padded maximum. DialogSum (shared DIALOGSUM.md): dialogues ~130 words on average,
median ~115, longest ~790, ~9.5 turns tagged `#Person1#`/`#Person2#` and separated by newlines; summaries ~19-21
words. Word counts here are whitespace-separated words of the text as stored, speaker tags included.

Words are drawn, by frequency, from the built-in synthetic corpus, which the built-in tokenizer learned: with speaker
tags and punctuation that gives ~1.45 tokens per word, close to the 1.3-1.4 that real sub-word tokenizers give on
DialogSum (general English words would cost ~3 tokens each with the built-in 2,048-token vocabulary).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from functools import cache

from job.synthetic import BUILTIN_DIR

MEDIAN_WORDS = 115
MEAN_WORDS = 130
MAX_WORDS = 790
MIN_WORDS = 25
WORDS_PER_TURN = MEAN_WORDS / 9.5
SUMMARY_MEAN_WORDS = 20
SUMMARY_SD_WORDS = 6
# A lognormal with this median and mean: mean = median * exp(sigma^2 / 2).
SIGMA = math.sqrt(2 * math.log(MEAN_WORDS / MEDIAN_WORDS))
THIRD_SPEAKER = 0.05  # a few DialogSum dialogues have more than two speakers


@dataclass(frozen=True)
class Example:
    id: str
    dialogue: str
    summary: str

    def row(self) -> dict[str, str]:
        return {"id": self.id, "dialogue": self.dialogue, "summary": self.summary, "topic": "dialogsum-like"}


@cache
def corpus_words() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Words of the built-in training dialogues with their frequencies (a Zipf-like mix of common and rare)."""
    counts: Counter[str] = Counter()
    for line in (BUILTIN_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines():
        text = re.sub(r"#Person\d#:?", " ", json.loads(line)["dialogue"])  # tags are added per turn, not as words
        counts.update(re.findall(r"[A-Za-z']+", text))
    words = sorted(counts)
    return tuple(words), tuple(counts[w] for w in words)


def _word(r: random.Random) -> str:
    words, weights = corpus_words()
    return r.choices(words, weights)[0]


def _sentences(r: random.Random, n_words: int) -> str:
    """n_words words cut into sentences of 3-14 words ending in '.' or '?' (not capitalized: the small built-in
    vocabulary splits capitalized forms of its words into several tokens, which real tokenizers do not)."""
    out: list[str] = []
    left = n_words
    while left > 0:
        size = min(left, r.randint(3, 14))
        words = [_word(r) for _ in range(size)]
        out.append(" ".join(words) + ("?" if r.random() < 0.25 else "."))
        left -= size
    return " ".join(out)


def _split(r: random.Random, total: int, parts: int) -> list[int]:
    """total split into `parts` positive integers with uneven, random shares (turns are of very different lengths)."""
    weights = [r.gammavariate(2.0, 1.0) for _ in range(parts)]
    scale = (total - parts) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def dialogue_words(r: random.Random) -> int:
    """A dialogue length in words: lognormal with DialogSum's median and mean, cut to its observed range."""
    return min(MAX_WORDS, max(MIN_WORDS, round(r.lognormvariate(math.log(MEDIAN_WORDS), SIGMA))))


def make_dialogue(r: random.Random, n_words: int) -> str:
    turns = max(2, min(n_words // 3, round(n_words / WORDS_PER_TURN * r.uniform(0.7, 1.3))))
    speakers = 3 if r.random() < THIRD_SPEAKER else 2
    lines = []
    for k, size in enumerate(_split(r, n_words, turns)):
        who = k % speakers + 1
        # the tag counts as one of the turn's words, as it does in DialogSum's word counts
        text = _sentences(r, size - 1) if size > 1 else "Yes."
        lines.append(f"#Person{who}#: {text}")
    return "\n".join(lines)


def make_summary(r: random.Random) -> str:
    n = min(60, max(6, round(r.gauss(SUMMARY_MEAN_WORDS, SUMMARY_SD_WORDS))))
    text = _sentences(r, n - 4)  # "#Person1# and #Person2#" are the first four words
    return f"#Person1# and #Person2# {text[0].lower()}{text[1:]}"


def examples(n: int, seed: int = 0) -> list[Example]:
    """n examples; the same (n, seed) always gives the same examples, and a larger n extends a smaller one."""
    r = random.Random(seed)
    return [Example(f"bench_{i}", make_dialogue(r, dialogue_words(r)), make_summary(r)) for i in range(n)]


def statistics_of(rows: list[Example], tokenizer=None) -> dict[str, float]:
    """Word (and, given a tokenizer, token) statistics, recorded next to the results they produced."""
    words = [len(e.dialogue.split()) for e in rows]
    summary = [len(e.summary.split()) for e in rows]
    turns = [e.dialogue.count("\n") + 1 for e in rows]
    stats = {
        "examples": len(rows),
        "dialogue_words_mean": round(statistics.fmean(words), 1),
        "dialogue_words_median": statistics.median(words),
        "dialogue_words_max": max(words),
        "turns_mean": round(statistics.fmean(turns), 1),
        "summary_words_mean": round(statistics.fmean(summary), 1),
    }
    if tokenizer is not None:
        tokens = [len(tokenizer(e.dialogue, add_special_tokens=False)["input_ids"]) for e in rows]
        stats["dialogue_tokens_per_word"] = round(sum(tokens) / sum(words), 2)
    return stats
