"""`python -m benchmarks --size tiny`: every arm of the CPU benchmark runs at a tiny size with its like-for-like
checks: the job's padding-free training against padding to each batch's longest example (TRL's default collator),
group-by-length and fixed padding, on the same examples with the same losses; sorted batched generation against
unsorted batches (LLaMA-Factory's batch predict) and one at a time, with the same summaries. Its ratios and the
goals (pass/fail) are written to the results file and printed. The figures mean nothing at this size: docs/speed.md
has the measured ones."""

from __future__ import annotations

import json

import pytest

from benchmarks import report
from benchmarks.__main__ import main
from benchmarks.eval_speed import check_identical
from benchmarks.train_speed import LOSS_TOLERANCE, Arm, check_same_losses

TRAIN_ARMS = ("padding_free", "per_batch_padding", "group_by_length", "fixed_padding")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    assert main(["--size", "tiny", "--only", "train,eval", "--out", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))["cpu"]


def test_every_training_arm_trains_the_same_examples_to_the_same_losses(tiny_run):
    train = tiny_run["train"]
    first = train["padding_free"]
    for arm in TRAIN_ARMS:
        assert train[arm]["tokens_per_second"] > 0, arm
        assert train[arm]["non_padding_tokens"] == first["non_padding_tokens"], arm
        assert train[arm]["label_tokens"] == first["label_tokens"], arm
    assert train["per_batch_padding"]["losses"] == pytest.approx(first["losses"], rel=LOSS_TOLERANCE)
    assert train["max_relative_loss_difference"] <= LOSS_TOLERANCE
    padding = [train[arm]["padding_fraction"] for arm in TRAIN_ARMS]
    assert padding[0] == 0 < padding[2] <= padding[1] < padding[3]
    assert "DataCollator" in train["per_batch_padding"]["collator"]  # TRL's where installed, else transformers'


def test_every_generation_arm_writes_the_same_summaries(tiny_run):
    ev = tiny_run["eval"]
    assert ev["identical_summaries"] == ev["dialogues"]
    for arm in ("batched", "unsorted_batched", "one_at_a_time"):
        assert ev[arm]["summaries_per_second"] > 0, arm
    assert ev["speedup_over_unsorted_batched"] > 0 and len(ev["speedup_over_unsorted_batched_each"]) == ev["repeats"]


def test_ratios_and_goals_are_recorded_and_printed(tiny_run, capsys):
    ratios, goals = tiny_run["ratios"], tiny_run["goals"]
    assert ratios["train_speedup_over_per_batch_padding"] == tiny_run["train"]["speedup_over_per_batch_padding"]
    assert ratios["train_speedup_over_group_by_length"] == tiny_run["train"]["speedup_over_group_by_length"]
    assert ratios["eval_speedup_over_unsorted_batched"] == tiny_run["eval"]["speedup_over_unsorted_batched"]
    assert {k: g["at_least"] for k, g in goals.items()} == {
        "train_speedup_over_per_batch_padding": 1.3,
        "train_speedup_over_group_by_length": 1.0,
        "eval_speedup_over_unsorted_batched": 1.5,
    }
    for name, g in goals.items():
        assert g["measured"] == ratios[name] and g["met"] == (g["measured"] >= g["at_least"])
    printed = report.table(tiny_run)
    for name, g in goals.items():
        assert f"goal {name} >= {g['at_least']}x: {g['measured']:.2f}x {'pass' if g['met'] else 'FAIL'}" in printed
    assert "unsorted batches of" in printed and "group-by-length" in printed


def test_a_goal_below_its_ratio_fails_and_an_unmeasured_one_says_so():
    record = {"train": {"speedup_over_per_batch_padding": 1.29, "speedup_over_group_by_length": 1.0}}
    lines = report.goal_lines(record)
    assert lines == [
        "goal train_speedup_over_per_batch_padding >= 1.3x: 1.29x FAIL",
        "goal train_speedup_over_group_by_length >= 1.0x: 1.00x pass",
        "goal eval_speedup_over_unsorted_batched >= 1.5x: not measured",
    ]


def test_arms_that_disagree_stop_the_benchmark():
    """A collator that dropped or leaked tokens would change the loss: the comparison refuses to report it."""
    arm = dict(tokens_per_second=1.0, real_tokens=1, fed_tokens=1, label_tokens=1, seconds=1.0, padding_fraction=0.0)
    packed = Arm(name="padding_free", losses=[2.0, 1.5], **arm)
    leaky = Arm(name="per_batch_padding", losses=[2.0, 1.6], **arm)
    with pytest.raises(AssertionError, match="padding_free and per_batch_padding losses differ"):
        check_same_losses(packed, leaky)
    with pytest.raises(AssertionError, match="1 of 2 unsorted batched summaries differ"):
        check_identical("unsorted batched", ["a b", "c"], ["a b", "d"])
