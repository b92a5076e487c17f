"""GPU and instance catalog, the dated price table and the time and cost estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from job import config, memory
from launch import catalog

LLAMA_3B = str(Path(config.__file__).parent / "presets" / "llama-3.2-3b-qlora.yaml")
SHARED_DIALOGSUM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum"


def test_every_instance_has_a_known_gpu_and_a_price() -> None:
    prices = catalog.prices()
    for name, inst in catalog.INSTANCES.items():
        assert inst.gpu in catalog.GPUS, name
        assert prices["on_demand"][name] > 0, name
    assert set(prices["derived"]) <= set(prices["on_demand"])
    assert set(catalog.GPUS) == set(memory.GPU_MEMORY_GB)


def test_price_table_is_dated_and_sourced() -> None:
    table = json.loads(catalog.PRICES_FILE.read_text())
    assert table["as_of"][:4].isdigit() and table["region"] == "us-east-1"
    assert "aws.amazon.com" in table["source"]
    assert 0 < table["spot_discount"] < 1


@pytest.mark.parametrize(
    ("name", "gpu", "count", "bf16"),
    [
        ("ml.g4dn.xlarge", "T4", 1, False),
        ("ml.g5.xlarge", "A10G", 1, True),
        ("ml.g5.12xlarge", "A10G", 4, True),
        ("ml.g6.xlarge", "L4", 1, True),
        ("ml.g6e.xlarge", "L40S", 1, True),
        ("ml.p4d.24xlarge", "A100-40GB", 8, True),
        ("ml.p5.48xlarge", "H100", 8, True),
    ],
)
def test_instance_specs(name: str, gpu: str, count: int, bf16: bool) -> None:
    inst = catalog.instance(name)
    assert (inst.gpu, inst.gpu_count, inst.bf16) == (gpu, count, bf16)


def test_unknown_instances_are_rejected_with_choices() -> None:
    with pytest.raises(catalog.UnknownInstance, match="ml.g5.xlarge"):
        catalog.instance("ml.m5.xlarge")
    with pytest.raises(catalog.UnknownInstance, match=r"ml\.g5\.xlarge\?"):
        catalog.instance("g5.xlarge")


def test_dialogsum_epoch_hours_scale_with_data_epochs_and_gpu() -> None:
    cfg = config.resolve(LLAMA_3B)
    one = catalog.estimate_hours(cfg, "A10G")
    assert one["steps"] == -(-12_460 // 16)
    assert one["train_tokens"] == one["steps"] * 16 * one["tokens_per_example"]
    assert 240 < one["tokens_per_example"] < 260  # real DialogSum, barely cut at data.max_length=1024
    two = catalog.estimate_hours(config.resolve(LLAMA_3B, ["train.epochs=2"]), "A10G")
    assert two["train_hours"] == pytest.approx(2 * one["train_hours"], rel=0.01)
    assert catalog.estimate_train_hours(cfg, "H100") < catalog.estimate_train_hours(cfg, "A10G")
    assert catalog.estimate_train_hours(cfg, "A10G") < catalog.estimate_train_hours(cfg, "T4")
    assert 0.1 < one["hours"] < 5  # one epoch of a 3B model on one A10G is an hour-scale job
    assert one["generation_hours"] > 0


def test_max_steps_and_caps_bound_the_work() -> None:
    capped = catalog.estimate_hours(config.resolve(LLAMA_3B, ["data.max_train_examples=1000"]), "A10G")
    assert capped["steps"] == -(-1000 // 16)
    stepped = catalog.estimate_hours(config.resolve(LLAMA_3B, ["train.max_steps=10"]), "A10G")
    assert stepped["steps"] == 10 and stepped["train_tokens"] == 10 * 16 * stepped["tokens_per_example"]
    fewer = catalog.estimate_hours(config.resolve(LLAMA_3B, ["eval.num_dialogues=50"]), "A10G")
    assert fewer["generation_hours"] < capped["generation_hours"]


def test_cost_on_demand_and_spot() -> None:
    cfg = config.resolve(LLAMA_3B)
    on_demand = catalog.estimate_cost(cfg, "ml.g5.xlarge", spot=False)
    spot = catalog.estimate_cost(cfg, "ml.g5.xlarge", spot=True)
    assert on_demand["on_demand_per_hour"] == catalog.prices()["on_demand"]["ml.g5.xlarge"]
    assert on_demand["usd"] == pytest.approx(on_demand["hours"] * on_demand["on_demand_per_hour"], abs=0.02)
    assert spot["usd"] == pytest.approx(on_demand["usd"] * (1 - catalog.prices()["spot_discount"]), abs=0.02)
    assert on_demand["prices_as_of"] == catalog.prices()["as_of"]
    assert spot["hours"] >= catalog.STARTUP_HOURS


def test_tokens_per_example_come_from_real_dialogsum_lengths_cut_at_max_length() -> None:
    stats = catalog.dialogsum_lengths()
    assert "statistics only" in stats["source"] and len(stats["example_tokens_percentiles"]) == 100
    full = catalog.tokens_per_example(config.resolve(LLAMA_3B))
    assert full == pytest.approx(stats["example_tokens_mean"], rel=0.01)
    short = config.resolve(LLAMA_3B, ["data.max_length=256", "data.max_summary_tokens=64"])
    assert 256 < stats["example_tokens"]["p90"]  # so a 256-token limit cuts more than a tenth of the examples
    assert 0.8 * full < catalog.tokens_per_example(short) < 0.9 * full
    assert (
        catalog.estimate_hours(short, "A10G")["train_hours"]
        < catalog.estimate_hours(config.resolve(LLAMA_3B), "A10G")["train_hours"]
    )
    assert catalog.tokens_per_example(config.resolve(LLAMA_3B, ["data.dataset=builtin:synthetic"])) == 120


@pytest.mark.skipif(
    not (SHARED_DIALOGSUM / "dialogsum.test.jsonl").is_file(),
    reason=f"no DialogSum release files in {SHARED_DIALOGSUM}",
)
def test_the_committed_lengths_are_what_the_release_files_give() -> None:
    from benchmarks import dialogsum_lengths

    assert dialogsum_lengths.statistics(SHARED_DIALOGSUM) == catalog.dialogsum_lengths()
