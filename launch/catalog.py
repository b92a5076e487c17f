"""GPUs and SageMaker instance types the job runs on, their prices, and how long and how much a config will take.

Shared by the launchers (instance validation, the memory-fit check, the `--dry-run` cost estimate). The GPU and
instance tables and their prices live in `job.catalog`, which `python -m job compare` reads too (the job imports
nothing from launch). Imports no torch.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

from job import memory
from job.catalog import (  # noqa: F401 - the tables, read here by the launchers
    CPU_INSTANCES,
    ESTIMATES_AS_OF,
    GPUS,
    INSTANCES,
    PRICES_FILE,
    PROCESSORS,
    REFERENCE_PARAMS,
    Gpu,
    Instance,
    prices,
)
from job.config import Config


class UnknownInstance(ValueError):
    pass


def instance(name: str) -> Instance:
    """The catalog entry for an instance type; raises UnknownInstance naming the GPU types we support."""
    if name in INSTANCES or name in CPU_INSTANCES:
        return INSTANCES.get(name) or CPU_INSTANCES[name]
    singles = ", ".join(n for n, i in INSTANCES.items() if i.gpu_count == 1 and n.endswith(".xlarge"))
    if not name.startswith("ml."):
        hint = f" (SageMaker names start with ml.: ml.{name}?)" if f"ml.{name}" in INSTANCES else ""
        raise UnknownInstance(f"instance type {name!r} is not a SageMaker type{hint}; GPU types: {singles}, ...")
    raise UnknownInstance(
        f"{name} is not a GPU instance type this job supports; use one of {singles} "
        f"(or larger sizes of g4dn, g5, g6, g6e, or ml.p4d.24xlarge, ml.p5.48xlarge); {', '.join(CPU_INSTANCES)} "
        "(no GPU) takes configs with train.require_gpu=false, such as the test job (--config test)"
    )


# --------------------------------------------------------------------------------------------------------------
# Data sets: rows and average tokens per training example (prompt + summary with the Llama-3 chat template).

LENGTHS_FILE = Path(__file__).with_name("dialogsum_lengths.json")
"""Token-length quantiles of real DialogSum training examples (benchmarks/dialogsum_lengths.py; statistics only)."""


@cache
def dialogsum_lengths() -> dict[str, Any]:
    return json.loads(LENGTHS_FILE.read_text(encoding="utf-8"))


DATASETS: dict[str, dict[str, int]] = {
    # knkarthick/dialogsum: 12,460 / 500 / 1,500 rows (the test split has 3 references for each of 500 dialogues).
    "knkarthick/dialogsum": {
        "train": 12_460,
        "validation": 500,
        "test_dialogues": 500,
        "tokens_per_example": round(dialogsum_lengths()["example_tokens_mean"]),
    },
    # job/builtin/*.jsonl with the built-in byte-level tokenizer.
    "builtin:synthetic": {"train": 1_200, "validation": 60, "test_dialogues": 60, "tokens_per_example": 120},
}
DEFAULT_DATASET = "knkarthick/dialogsum"  # unknown data sets are assumed to look like DialogSum


def dataset_figures(name: str) -> tuple[dict[str, int], bool]:
    """(figures, known) for a data set; unknown ones get DialogSum's figures and known=False."""
    if name in DATASETS:
        return DATASETS[name], True
    return DATASETS[DEFAULT_DATASET], False


def tokens_per_example(cfg: Config) -> float:
    """Mean tokens a training example of cfg's data set takes at cfg.data.max_length (longer ones are cut to it):
    DialogSum's measured length quantiles, capped, for DialogSum and unknown data sets; the fixed figure else."""
    figures, known = dataset_figures(cfg.data.dataset)
    if known and cfg.data.dataset != DEFAULT_DATASET:
        return float(min(figures["tokens_per_example"], cfg.data.max_length))
    percentiles = dialogsum_lengths()["example_tokens_percentiles"]  # each stands for 1% of the examples
    return sum(min(v, cfg.data.max_length) for v in percentiles) / len(percentiles)


def _params(cfg: Config) -> float:
    try:
        return memory.parameter_counts(memory.architecture(cfg.model.name))["total"]
    except memory.UnknownArchitecture:
        return REFERENCE_PARAMS


def _speedup(cfg: Config) -> float:
    """How much faster than the reference 3B model this model runs: inverse to its size, capped because small
    models are bound by kernel launches, not arithmetic."""
    return min(20.0, REFERENCE_PARAMS / _params(cfg))


def estimate_hours(cfg: Config, gpu: str, count: int = 1) -> dict[str, Any]:
    """Expected hours of training, validation-loss passes and ROUGE generation for cfg on `count` GPUs."""
    spec = PROCESSORS[gpu]
    figures, known = dataset_figures(cfg.data.dataset)
    rows = min(figures["train"], cfg.data.max_train_examples or figures["train"])
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps * count
    if cfg.train.max_steps > 0:
        steps = cfg.train.max_steps
    else:
        steps = math.ceil(rows * cfg.train.epochs / per_step)
    examples = steps * per_step
    per_example = tokens_per_example(cfg)
    tokens = examples * per_example

    throughput = spec.train_tokens_per_s * _speedup(cfg) * count * (0.9 if count > 1 else 1.0)
    if not cfg.train.gradient_checkpointing:
        throughput *= 1.3  # no recomputation in the backward pass
    train_s = tokens / throughput

    # Validation loss: a forward pass only, about a third of a training step's cost per token.
    evaluations = steps // cfg.train.eval_steps if cfg.train.eval_steps else max(1, round(4 * cfg.train.epochs))
    eval_rows = min(figures["validation"], cfg.data.max_eval_examples or figures["validation"])
    validation_s = evaluations * eval_rows * per_example / (3 * throughput) if cfg.data.eval_split else 0

    dialogues = cfg.eval.num_dialogues or figures["test_dialogues"]
    passes = 2 if cfg.eval.base else 1
    step_s = max(0.01, spec.decode_step_s / _speedup(cfg))
    # Under torchrun the job splits the dialogues across the ranks.
    batches = math.ceil(math.ceil(dialogues / count) / cfg.eval.batch_size)
    generation_s = passes * batches * cfg.eval.max_new_tokens * step_s

    return {
        "gpu": gpu,
        "gpus": count,
        "steps": steps,
        "train_tokens": tokens,
        "tokens_per_example": per_example,
        "train_hours": train_s / 3600,
        "validation_hours": validation_s / 3600,
        "generation_hours": generation_s / 3600,
        "hours": (train_s + validation_s + generation_s) / 3600,
        "dataset_known": known,
        "estimates_as_of": ESTIMATES_AS_OF,
    }


def estimate_train_hours(cfg: Config, gpu: str, count: int = 1) -> float:
    """Hours of GPU work (training, validation loss, ROUGE generation) for cfg on `count` GPUs of model `gpu`."""
    return estimate_hours(cfg, gpu, count)["hours"]


# --------------------------------------------------------------------------------------------------------------
# Prices

STARTUP_HOURS = 0.2  # billed before the first step: image pull, requirements install, model download and load


def estimate_cost(
    cfg: Config, instance_type: str, spot: bool, instance_count: int = 1, all_gpus: bool = False
) -> dict[str, Any]:
    """Expected hours and USD for cfg on `instance_count` instances (on-demand or managed spot), with the figures'
    dates. `all_gpus`: the job runs under torchrun on every GPU of every instance; else in one process on one GPU.
    """
    inst = instance(instance_type)
    work = estimate_hours(cfg, inst.gpu, max(1, inst.gpu_count) * instance_count if all_gpus else 1)
    hours = work["hours"] + STARTUP_HOURS
    table = prices()
    price = table["on_demand"].get(instance_type)
    discount = table["spot_discount"] if spot else 0.0
    on_demand_cost = None if price is None else round(price * hours * instance_count, 2)
    return {
        "instance_type": instance_type,
        "instance_count": instance_count,
        "gpu": inst.gpu,
        "hours": round(hours, 2),
        "work": {k: round(v, 3) if isinstance(v, float) else v for k, v in work.items()},
        "on_demand_per_hour": price,
        "spot": spot,
        "spot_discount": discount,
        "on_demand_usd": on_demand_cost,
        "usd": None if on_demand_cost is None else round(on_demand_cost * (1 - discount), 2),
        "prices_as_of": table["as_of"],
        "prices_region": table["region"],
        "price_derived": instance_type in table["derived"],
    }
