"""`python -m benchmarks gpu --tiny`: every stage of the prepared GPU check runs at a tiny size on this machine (the
CPU here, where the CUDA-only stages say they were skipped and why), writes its result as it goes, and `--only`
reruns one stage keeping the others. The full-size run needs a CUDA GPU (see docs/speed.md)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from benchmarks import __main__ as benchmarks_cli
from benchmarks import gpu
from tests.conftest import run_here

CUDA_ONLY = {"train_fp16", "fsdp"}


def run(*args: str) -> subprocess.CompletedProcess:
    """`python -m benchmarks gpu --tiny ARGS` through its `main` in this process: its stages start no process."""
    return run_here("benchmarks", benchmarks_cli.main, "gpu", "--tiny", *args)


@pytest.mark.slow
def test_every_stage_runs_or_says_why_it_was_skipped(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run("--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads(out.read_text())["gpu"]
    assert record["tiny"] and record["device"] and record["versions"]["bitsandbytes"] != "missing"
    stages = record["stages"]
    assert list(stages) == list(gpu.STAGES)
    for name, result in stages.items():
        if name in CUDA_ONLY and not torch.cuda.is_available():
            assert result["status"].startswith("skipped: CUDA-only:"), (name, result)
        else:
            assert result["status"] == "ok", (name, result)
    assert stages["packing"][stages["packing"]["job_attention"]]["exact"]
    assert stages["resume"]["resumed_from"] == f"checkpoint-{stages['resume']['interrupted_after_step']}"
    generation = stages["generation"]["decoder_4bit"]
    assert generation["batched_equal_to_one_at_a_time"] <= generation["dialogues"]
    assert stages["merge"]["merged_vs_16bit_base_plus_adapter"]["argmax_agreement"] == 1.0
    assert set(stages["throughput"]["ratios"]) == {
        "padding_free_over_per_batch_padding",
        "padding_free_over_group_by_length",
        "padding_free_over_fixed_padding",
    }
    throughput = stages["throughput"]  # the figure that decides job.training.PADDING_FREE_ON_SDPA for this device
    assert throughput["padding_free_on_sdpa_over_group_by_length"] > 0
    assert throughput["attention"] == stages["packing"]["job_attention"]
    assert "DataCollator" in throughput["per_batch_padding_collator"]

    before = stages["train_bf16"]
    again = run("--out", str(out), "--only", "packing")
    assert again.returncode == 0, again.stderr[-4000:]
    rerun = json.loads(out.read_text())["gpu"]["stages"]
    assert rerun["train_bf16"] == before and rerun["packing"]["status"] == "ok"


def test_an_unknown_stage_is_refused():
    proc = run("--only", "warp_drive")
    assert proc.returncode == 2 and "unknown stage(s) warp_drive" in proc.stderr
