"""GPUs and SageMaker instance types the job runs on, and what they cost per hour (`prices.json`, dated, with its
source): read by `python -m job compare` for its cost column and by the launchers (launch.catalog) for instance
validation and their estimates. The throughput and generation figures are estimates, dated below, until a benchmark
on each GPU replaces them. Imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from job import memory

PRICES_FILE = Path(__file__).with_name("prices.json")

# The throughput figures below were set on this date from the GPUs' dense 16-bit tensor throughput and memory
# bandwidth relative to an A10G, with bitsandbytes' 4-bit dequantization overhead; none is a measurement yet.
ESTIMATES_AS_OF = "2026-11-23"
REFERENCE_PARAMS = 3.2e9  # the figures are for Llama-3.2-3B (3.21B parameters) in 4-bit NF4


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: int
    """Nominal memory (the marketing figure: 16, 24, 48, 40, 80)."""
    usable_gb: float
    """What PyTorch sees, in GiB: the figure the memory-fit check compares against."""
    bf16: bool
    """Compute capability >= 8.0 (bf16 and flash attention); T4 trains in fp16."""
    train_tokens_per_s: float
    """QLoRA training throughput, non-padding tokens/s per GPU, 3B model in 4-bit, gradient checkpointing on,
    sequences up to 1024 tokens. Estimate (ESTIMATES_AS_OF)."""
    decode_step_s: float
    """Seconds per generated token for a batch of up to 32 prompts, 3B model in 4-bit (bitsandbytes' decode is
    kernel-launch bound, so this barely depends on the batch). Estimate (ESTIMATES_AS_OF)."""


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("T4", 16, memory.GPU_MEMORY_GB["T4"], False, 800, 0.070),
        Gpu("A10G", 24, memory.GPU_MEMORY_GB["A10G"], True, 2_000, 0.050),
        Gpu("L4", 24, memory.GPU_MEMORY_GB["L4"], True, 1_700, 0.055),
        Gpu("L40S", 48, memory.GPU_MEMORY_GB["L40S"], True, 4_000, 0.040),
        Gpu("A100-40GB", 40, memory.GPU_MEMORY_GB["A100-40GB"], True, 5_000, 0.035),
        Gpu("H100", 80, memory.GPU_MEMORY_GB["H100"], True, 9_000, 0.030),
    )
}


CPU = Gpu("CPU", 0, 0.0, False, 20, 3.0)
"""What the estimates take for a CPU instance's 2 vCPUs, in the GPUs' terms (the 3B reference in 4-bit: bitsandbytes
runs NF4 on the CPU). No GPU memory: only configs with train.require_gpu=false run there. Estimate (ESTIMATES_AS_OF),
set low on purpose: a tiny model trained ~28k tokens/s on 2 cores of a build machine."""
PROCESSORS: dict[str, Gpu] = {**GPUS, CPU.name: CPU}
"""Every spec an instance's `gpu` names: the GPUs, and "CPU" for instances without one."""


@dataclass(frozen=True)
class Instance:
    name: str
    gpu: str
    gpu_count: int
    vcpu: int
    ram_gb: int
    """Host memory, GiB."""

    @property
    def gpu_spec(self) -> Gpu:
        return PROCESSORS[self.gpu]

    @property
    def bf16(self) -> bool:
        return self.gpu_spec.bf16


def _family(prefix: str, gpu: str, sizes: list[tuple[str, int, int, int]]) -> list[Instance]:
    return [Instance(f"ml.{prefix}.{size}", gpu, count, vcpu, ram) for size, count, vcpu, ram in sizes]


# (size, GPUs, vCPUs, host GiB) from the EC2 instance type pages of each family.
INSTANCES: dict[str, Instance] = {
    i.name: i
    for i in (
        _family(
            "g4dn",
            "T4",
            [
                ("xlarge", 1, 4, 16),
                ("2xlarge", 1, 8, 32),
                ("4xlarge", 1, 16, 64),
                ("8xlarge", 1, 32, 128),
                ("16xlarge", 1, 64, 256),
                ("12xlarge", 4, 48, 192),
            ],
        )
        + _family(
            "g5",
            "A10G",
            [
                ("xlarge", 1, 4, 16),
                ("2xlarge", 1, 8, 32),
                ("4xlarge", 1, 16, 64),
                ("8xlarge", 1, 32, 128),
                ("16xlarge", 1, 64, 256),
                ("12xlarge", 4, 48, 192),
                ("24xlarge", 4, 96, 384),
                ("48xlarge", 8, 192, 768),
            ],
        )
        + _family(
            "g6",
            "L4",
            [
                ("xlarge", 1, 4, 16),
                ("2xlarge", 1, 8, 32),
                ("4xlarge", 1, 16, 64),
                ("8xlarge", 1, 32, 128),
                ("16xlarge", 1, 64, 256),
                ("12xlarge", 4, 48, 192),
                ("24xlarge", 4, 96, 384),
                ("48xlarge", 8, 192, 768),
            ],
        )
        + _family(
            "g6e",
            "L40S",
            [
                ("xlarge", 1, 4, 32),
                ("2xlarge", 1, 8, 64),
                ("4xlarge", 1, 16, 128),
                ("8xlarge", 1, 32, 256),
                ("16xlarge", 1, 64, 512),
                ("12xlarge", 4, 48, 384),
                ("24xlarge", 4, 96, 768),
                ("48xlarge", 8, 192, 1536),
            ],
        )
        + _family("p4d", "A100-40GB", [("24xlarge", 8, 96, 1152)])
        + _family("p5", "H100", [("48xlarge", 8, 192, 2048)])
    )
}


CPU_INSTANCES: dict[str, Instance] = {i.name: i for i in (Instance("ml.m5.large", CPU.name, 0, 2, 8),)}
"""CPU instances: the cents-cheap test job (`--config test --instance ml.m5.large`) that checks an account end to
end before a GPU run; configs with train.require_gpu=true are refused on them."""


@cache
def prices() -> dict[str, Any]:
    return json.loads(PRICES_FILE.read_text(encoding="utf-8"))
