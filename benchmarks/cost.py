"""What the default preset costs: GPU-hours and dollars from the launchers' own catalog (`launch.catalog`).

The figures are the ones `python -m launch sagemaker --dry-run` and `python -m launch kaggle` print, for
llama-3.2-3b-qlora.yaml: DialogSum's 12,460 training dialogues for one epoch, then the 500 test dialogues summarized
by the base and the fine-tuned model. The catalog's throughput figures are estimates (dated in it) until a GPU run
of the training benchmark replaces them.

Next to them, what the same work would cost done the notebooks' way, derived from the same catalog figures (not
measured): training compute grows from the average example to max_length tokens per example, and generation runs
one dialogue per decode loop instead of eval.batch_size (the catalog's decode step barely depends on the batch).
"""

from __future__ import annotations

import math
from typing import Any

PRESET = "llama-3.2-3b-qlora"
SAGEMAKER_INSTANCE = "ml.g5.xlarge"


def run() -> dict[str, Any]:
    from job.config import resolve
    from launch import catalog
    from launch.kaggle import kernel_folder as kaggle

    cfg = resolve(PRESET)
    on_demand = catalog.estimate_cost(cfg, SAGEMAKER_INSTANCE, spot=False)
    spot = catalog.estimate_cost(cfg, SAGEMAKER_INSTANCE, spot=True)
    kaggle_gpu, kaggle_gpus = kaggle.SHAPES[kaggle.DEFAULT_SHAPE]
    t4 = catalog.estimate_hours(cfg, kaggle_gpu, kaggle_gpus)
    figures, _ = catalog.dataset_figures(cfg.data.dataset)
    return {
        "preset": PRESET,
        "dataset": cfg.data.dataset,
        "train_examples": figures["train"],
        "epochs": cfg.train.epochs,
        "eval_dialogues": cfg.eval.num_dialogues or figures["test_dialogues"],
        "generation_passes": 2 if cfg.eval.base else 1,
        "estimates_as_of": catalog.ESTIMATES_AS_OF,
        "prices_as_of": on_demand["prices_as_of"],
        "prices_region": on_demand["prices_region"],
        "sagemaker": {
            "instance_type": SAGEMAKER_INSTANCE,
            "gpu": on_demand["gpu"],
            "work_hours": on_demand["work"],
            "billed_hours": on_demand["hours"],
            "startup_hours": catalog.STARTUP_HOURS,
            "on_demand_per_hour": on_demand["on_demand_per_hour"],
            "on_demand_usd": on_demand["usd"],
            "spot_discount": spot["spot_discount"],
            "spot_usd": spot["usd"],
            "notebook_way": notebook_way(
                cfg, on_demand["work"], on_demand["work"]["tokens_per_example"], catalog.STARTUP_HOURS, on_demand
            ),
        },
        "kaggle_t4x2": {
            "gpu": kaggle_gpu,
            "gpus": kaggle_gpus,
            "work_hours": {k: round(v, 3) if isinstance(v, float) else v for k, v in t4.items()},
            "session_hours": round(kaggle.estimate_hours(cfg), 2),
            "session_limit_hours": kaggle.SESSION_HOURS,
            "usd": 0.0,  # free, counted against the weekly GPU quota (~30 h)
            "notebook_way": notebook_way(cfg, t4, t4["tokens_per_example"], kaggle.STARTUP_HOURS, None),
        },
    }


def notebook_way(
    cfg, work: dict[str, Any], tokens_per_example: float, startup_hours: float, priced: dict[str, Any] | None
) -> dict[str, Any]:
    """Hours (and dollars where priced) for fixed padding to max_length and one-at-a-time generation."""
    dialogues = cfg.eval.num_dialogues or 500
    train = work["train_hours"] * cfg.data.max_length / tokens_per_example
    validation = work["validation_hours"] * cfg.data.max_length / tokens_per_example
    generation = work["generation_hours"] * dialogues / math.ceil(dialogues / cfg.eval.batch_size)
    hours = train + validation + generation
    out: dict[str, Any] = {
        "train_hours": round(train, 3),
        "validation_hours": round(validation, 3),
        "generation_hours": round(generation, 3),
        "hours": round(hours, 3),
        "billed_hours": round(hours + startup_hours, 2),
        "derived_not_measured": True,
    }
    if priced is not None:
        out["on_demand_usd"] = round((hours + startup_hours) * priced["on_demand_per_hour"], 2)
        from launch import catalog

        out["spot_usd"] = round(out["on_demand_usd"] * (1 - catalog.prices()["spot_discount"]), 2)
    return out
