"""What the benchmarks share: the config, the model (the job's own loading path), the examples, timing, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import dialogs

WORK_DIR = Path(__file__).parent / ".work"  # git-ignored: the built-in model's weights are written here

# The smoke preset's model, LoRA and optimizer settings (the built-in tiny Llama in 4-bit NF4), with the real preset's
# max_length so that the fixed-padding baseline pads to what llama-3.2-3b-qlora.yaml (and the notebooks) use.
OVERRIDES = ["data.max_length=1024", "data.max_summary_tokens=256"]


@dataclass(frozen=True)
class Size:
    train_examples: int
    batch_size: int
    """Examples per optimizer step, for both arms (the padded arm feeds batch_size x max_length tokens)."""
    train_steps: int
    """Timed optimizer steps per arm and repeat (after one untimed warm-up step)."""
    eval_dialogues: int
    eval_batch_size: int
    max_new_tokens: int
    repeats: int
    """Times each arm is measured, the arms interleaved, so a slow moment on a shared machine hits both."""


SIZES: dict[str, Size] = {
    # batch_size 4 is llama-3.2-3b-qlora.yaml's per-GPU batch; eval batch and max_new_tokens grow to its 32 and 128.
    "small": Size(
        train_examples=64,
        batch_size=4,
        train_steps=8,
        eval_dialogues=48,
        eval_batch_size=16,
        max_new_tokens=48,
        repeats=5,
    ),
    "medium": Size(
        train_examples=256,
        batch_size=4,
        train_steps=24,
        eval_dialogues=128,
        eval_batch_size=32,
        max_new_tokens=128,
        repeats=5,
    ),
    # every arm and check at a size the test suite runs in seconds; its figures mean nothing
    "tiny": Size(
        train_examples=8,
        batch_size=2,
        train_steps=2,
        eval_dialogues=4,
        eval_batch_size=2,
        max_new_tokens=4,
        repeats=1,
    ),
}


def config(extra: list[str] | None = None):
    from job.config import resolve

    return resolve("smoke", OVERRIDES + (extra or []))


def hardware():
    from job.modeling import detect_hardware

    return detect_hardware("auto")


def model_path(cfg) -> Path:
    from job import builtin

    return builtin.build(cfg.model.name, WORK_DIR / cfg.model.name.replace(":", "-"))


def load_model(cfg, hw, lora: bool):
    """The base model in 4-bit as the job loads it, with LoRA attached as the job attaches it when asked."""
    from job import modeling

    model = modeling.load_base_model(cfg, str(model_path(cfg)), hw)
    return modeling.add_adapters(model, cfg) if lora else model


def load_tokenizer(cfg):
    from job import modeling

    return modeling.load_tokenizer(str(model_path(cfg)), cfg)


def rows(n: int) -> list[dialogs.Example]:
    return dialogs.examples(n, seed=0)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, object]:
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        # bitsandbytes runs 4-bit inference through a bf16 kernel on CPUs with this extension
        "avx512_bf16": "avx512_bf16" in _cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
