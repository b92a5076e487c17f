"""The base model with a run's adapter merged in, saved as 16-bit safetensors (`output.merge: true`).

A QLoRA adapter is trained against 4-bit weights; merging it into the 16-bit weights gives a model that differs
from the trained one by the quantization error. The model card says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from job import rundir, runtime
from job.config import Config

log = logging.getLogger(__name__)

MERGED_README = """# Merged model of run {run}

`{base}` with the LoRA adapter of run `{run}` merged into its weights ({dtype}, safetensors). Load it with
`AutoModelForCausalLM.from_pretrained` like any model; no PEFT needed.

The adapter was trained with QLoRA against the base model's 4-bit (NF4) weights. This model adds it to the
16-bit weights instead, so it differs from the model that was trained and evaluated by the 4-bit quantization
error.
"""


def merged_dir(run_dir: Path) -> Path:
    """Where the merged model goes: `<run>/merged`, except on SageMaker, where the run folder is the model folder
    (packed into model.tar.gz): there it goes to the job's output data folder, kept as output.tar.gz."""
    model_dir = runtime.model_dir()
    if model_dir is not None and run_dir.resolve().is_relative_to(model_dir.resolve()):
        return runtime.OPT_ML / "output" / "data" / run_dir.name / "merged"
    return run_dir / "merged"


def merge_dtype(cfg: Config) -> str:
    """The configured compute dtype, else bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    if cfg.model.compute_dtype != "auto":
        return cfg.model.compute_dtype
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def merge_run(run_dir: Path, cfg: Config, dest: Path) -> Path:
    """Reload the base in 16-bit (fp32 on CPU), apply the run's adapter, merge it and save model + tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    adapter_dir = run_dir / "adapter"
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    adapter_base = adapter_config["base_model_name_or_path"]
    source = rundir.base_model_path(cfg, run_dir)
    dtype = merge_dtype(cfg)
    auto_class = AutoModelForSeq2SeqLM if adapter_config.get("task_type") == "SEQ_2_SEQ_LM" else AutoModelForCausalLM
    log.info("merging the adapter into %s (%s)", adapter_base, dtype)

    # On the CPU: the GPU may still hold the training model, and host memory is the larger pool.
    base = auto_class.from_pretrained(
        source, revision=cfg.model.revision, dtype=getattr(torch, dtype), trust_remote_code=cfg.model.trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(dest)
    (dest / "README.md").write_text(MERGED_README.format(run=run_dir.name, base=adapter_base, dtype=dtype))
    log.info("merged model saved to %s", dest)
    return dest
