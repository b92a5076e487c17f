"""ROUGE against hand-checked values, multi-reference scoring, intervals and sentence splitting."""

from __future__ import annotations

import pytest

from job import scoring


def test_hand_checked_single_pair():
    # prediction "the cat sat on the mat" vs reference "the cat was on the mat":
    # unigrams: 5 of 6 match both ways -> F1 5/6; bigrams: the-cat, on-the, the-mat = 3 of 5 -> 0.6;
    # LCS "the cat on the mat" = 5 -> 5/6.
    result = scoring.score(["the cat sat on the mat"], [["the cat was on the mat"]], bootstrap_samples=50)
    assert result["rouge1"] == pytest.approx(5 / 6)
    assert result["rouge2"] == pytest.approx(0.6)
    assert result["rougeL"] == pytest.approx(5 / 6)
    assert result["rougeLsum"] == pytest.approx(5 / 6)


def test_stemming_and_tags_are_normalised():
    # rouge_score lowercases, strips '#' and stems: "#Person1# books" vs "person1 booked" match fully
    result = scoring.score(["#Person1# books tables."], [["person1 booked table"]], bootstrap_samples=10)
    assert result["rouge1"] == pytest.approx(1.0)


def test_mean_over_pairs_and_best_reference():
    preds = ["a b c d", "x y"]
    refs = [["a b c d", "e f g h"], ["x y", "x y", "q r"]]
    result = scoring.score(preds, refs, bootstrap_samples=100)
    # pairs: dialogue 1 -> 1.0, 0.0; dialogue 2 -> 1.0, 1.0, 0.0 => mean over 5 pairs = 3/5
    assert result["rouge1"] == pytest.approx(3 / 5)
    assert result["multi_reference"]["rouge1"] == pytest.approx(1.0)
    lo, hi = result["ci95"]["rouge1"]
    assert 0 <= lo <= result["rouge1"] <= hi <= 1


def test_intervals_are_seeded():
    preds = ["a b", "c d", "e f", "a c"]
    refs = [["a b"], ["c x"], ["y z"], ["a"]]
    assert scoring.score(preds, refs, 200, seed=1)["ci95"] == scoring.score(preds, refs, 200, seed=1)["ci95"]


def test_rougelsum_uses_sentences():
    assert scoring.split_sentences("He left. She stayed! #Person1# waves.") == "He left.\nShe stayed!\n#Person1# waves."
    assert scoring.split_sentences("It costs 3.5 dollars.") == "It costs 3.5 dollars."
    pred, ref = "C d. A b.", "A b. C d."
    result = scoring.score([pred], [[ref]], bootstrap_samples=10)
    assert result["rougeLsum"] > result["rougeL"]  # summary-level LCS works per sentence


def test_lengths():
    result = scoring.score(["one two three four"], [["one two"]], bootstrap_samples=10)
    assert result["avg_words"] == 4 and result["length_ratio"] == 2
