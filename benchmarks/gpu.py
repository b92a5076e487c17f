"""`python -m benchmarks gpu [--tiny] [--only STAGE,...] [--out PATH]`: the job's GPU path checked and measured on one
CUDA GPU, in stages that write their results as they go (`--only` reruns some).

No download and nothing beyond torch, transformers, peft, accelerate and bitsandbytes: random weights in
Llama-3.2-3B's exact shape (benchmarks/configs/llama-3.2-3b.json, built once on the device and saved under
benchmarks/.work/), the built-in tokenizer and DialogSum-like examples (benchmarks/dialogs.py), the built-in T5 for
seq2seq. Every stage goes through the job's own code: `modeling.load_base_model` (4-bit NF4), `add_adapters`,
`training.train` (the Trainer, its optimizer, checkpoints, resume), `generation`, `merge.merge_run`.

Stages: `train_bf16`, `train_fp16` (the T4 path), `resume` (SIGTERM after a checkpoint, then the same training
again: the losses after the resume must match an uninterrupted run), `packing` (padding-free logits and loss against
separate and padded passes, with the attention the job picks), `generation` (batched vs one-at-a-time agreement
counts, sorted vs unsorted batches; the built-in T5 too), `merge` (the 16-bit merge against base + adapter),
`fsdp` (FSDP2 in one process: Trainer, checkpoint files, the gathered adapter, synced generation), `throughput`
(tokens/s and peak GiB at the preset's batch and length for padding-free, group-by-length, per-batch padding and
fixed padding, and the memory estimate against the measured peak). `--tiny` runs every stage at a tiny size on
whatever device is there (the CPU in CI); the CUDA-only parts say they were skipped and why.

Results go under `gpu` in benchmarks/results.json (`--tiny`: benchmarks/.work/gpu-tiny.json) with the device's name
and the library versions, each stage with its date, seconds and `status` (ok, failed with the error, or skipped
with the reason).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import common, dialogs

log = logging.getLogger("benchmarks.gpu")

STAGES = ("train_bf16", "train_fp16", "resume", "packing", "generation", "merge", "fsdp", "throughput")
CONFIG_3B = Path(__file__).parent / "configs" / "llama-3.2-3b.json"
DEFAULT_OUT = Path(__file__).with_name("results.json")
TINY_OUT = common.WORK_DIR / "gpu-tiny.json"
KEY = "gpu"


class Skipped(Exception):
    """The stage cannot run on this device; the message says why."""


@dataclass
class Size:
    examples: int
    train_steps: int
    dialogues: int
    max_new_tokens: int
    eval_batch_size: int
    throughput_steps: int


FULL = Size(examples=256, train_steps=8, dialogues=32, max_new_tokens=48, eval_batch_size=16, throughput_steps=6)
TINY = Size(examples=24, train_steps=4, dialogues=6, max_new_tokens=8, eval_batch_size=4, throughput_steps=2)


@dataclass
class Context:
    tiny: bool
    size: Size
    work: Path
    model_dir: Path
    hw: object  # job.modeling.Hardware
    results: dict = field(default_factory=dict)  # what earlier stages of this invocation measured

    @property
    def cuda(self) -> bool:
        return self.hw.device == "cuda"


# ----------------------------------------------------------------------------------------------
# Setup


def random_3b(folder: Path) -> Path:
    """Random weights in Llama-3.2-3B's shape (bf16, seed 0), built on the GPU and saved once, with the built-in
    tokenizer (its ids fall inside the 128k vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from job import builtin

    if (folder / "config.json").is_file():
        return folder
    tokenizer = builtin.load_tokenizer()
    config = LlamaConfig(**json.loads(CONFIG_3B.read_text()))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def context(tiny: bool) -> Context:
    from job import builtin, modeling

    work = common.WORK_DIR / ("gpu-tiny" if tiny else "gpu")
    work.mkdir(parents=True, exist_ok=True)
    hw = modeling.detect_hardware("auto")
    if tiny:
        model_dir = builtin.build("builtin:tiny-llama", common.WORK_DIR / "builtin-tiny-llama")
    else:
        if hw.device != "cuda":
            raise SystemExit("python -m benchmarks gpu needs a CUDA GPU; --tiny runs every check at a tiny size here")
        model_dir = random_3b(common.WORK_DIR / "llama-3.2-3b-random")
    return Context(tiny=tiny, size=TINY if tiny else FULL, work=work, model_dir=model_dir, hw=hw)


def config(ctx: Context, *extra: str):
    """The 3B preset's settings (the test preset's at --tiny) on the local model, a few steps, no validation."""
    from job.config import resolve

    steps = ctx.size.train_steps
    overrides = [
        f"model.name={ctx.model_dir}",
        f"train.max_steps={steps}",
        f"train.save_steps={steps // 2}",
        f"train.eval_steps={steps // 2}",
        "train.logging_steps=1",
        "train.gradient_accumulation_steps=1",
        "train.best_by_eval_loss=false",
        "train.warmup_ratio=0.0",
        "train.require_gpu=false",
        f"eval.max_new_tokens={ctx.size.max_new_tokens}",
        f"eval.batch_size={ctx.size.eval_batch_size}",
    ]
    return resolve("test" if ctx.tiny else "llama-3.2-3b-qlora", overrides + list(extra))


def with_dtype(hw, dtype: torch.dtype):
    from job.modeling import Hardware

    return Hardware(device=hw.device, name=hw.name, compute_dtype=dtype, capability=hw.capability)


def splits(ctx: Context) -> dict:
    from datasets import Dataset

    return {"train": Dataset.from_list([e.row() for e in dialogs.examples(ctx.size.examples, seed=0)])}


def load(ctx: Context, cfg, hw, adapters: bool = True):
    from job import modeling

    model = modeling.load_base_model(cfg, str(ctx.model_dir), hw)
    return modeling.add_adapters(model, cfg) if adapters else model


def tokenizer_of(ctx: Context, cfg):
    from job import modeling

    return modeling.load_tokenizer(str(ctx.model_dir), cfg)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------------------------
# Training: bf16, fp16, resume


def train_once(ctx: Context, cfg, hw, folder: Path, fsdp: dict | None = None):
    """The job's training on the benchmark examples, in `folder` (checkpoints included); returns (trainer, result)."""
    from job import modeling, training

    model = load(ctx, cfg, hw)
    attn = modeling.attention_implementation(cfg, hw)
    folder.mkdir(parents=True, exist_ok=True)
    reset_peak()
    return training.train(model, tokenizer_of(ctx, cfg), splits(ctx), cfg, hw, folder, folder / "checkpoints", attn,
                          fsdp=fsdp)  # fmt: skip


def step_losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: float(h["loss"]) for h in history if "loss" in h}


def train_record(trainer, result) -> dict:
    losses = step_losses(result.history)
    return {
        "optimizer": trainer.args.optim.value if hasattr(trainer.args.optim, "value") else str(trainer.args.optim),
        "bf16": trainer.args.bf16,
        "fp16": trainer.args.fp16,
        "steps": result.steps,
        "losses": [round(v, 5) for v in losses.values()],
        "all_finite": all(math.isfinite(v) for v in losses.values()),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "padding_fraction": round(result.padding_fraction, 4),
        "peak_gib": peak_gib(),
    }


def stage_train(ctx: Context, dtype: torch.dtype) -> dict:
    import shutil

    name = common_dtype_name(dtype)
    if not ctx.cuda and dtype == torch.float16:
        raise Skipped("CUDA-only: fp16 mixed precision (the GradScaler) runs on a GPU")
    hw = with_dtype(ctx.hw, dtype) if ctx.cuda else ctx.hw
    folder = ctx.work / f"train-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    trainer, result = train_once(ctx, config(ctx), hw, folder)
    record = train_record(trainer, result)
    record["status"] = "ok" if record["all_finite"] else "failed: a non-finite loss"
    if dtype != torch.float16:
        ctx.results["reference_losses"] = step_losses(result.history)
    del trainer
    free()
    return record


def common_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def stage_resume(ctx: Context) -> dict:
    """SIGTERM right after the mid-run checkpoint (a spot reclaim), then the same training again: it resumes from
    that checkpoint (paged 8-bit AdamW's state included on a GPU) and its losses match the uninterrupted run's."""
    import shutil

    from job import training

    cfg = config(ctx)
    reference = ctx.results.get("reference_losses")
    if reference is None:
        shutil.rmtree(ctx.work / "resume-reference", ignore_errors=True)
        trainer, result = train_once(ctx, cfg, ctx.hw, ctx.work / "resume-reference")
        reference = step_losses(result.history)
        del trainer
        free()
    folder = ctx.work / "resume"
    shutil.rmtree(folder, ignore_errors=True)
    half = cfg.train.save_steps
    os.environ["DIALOGSUM_FAULTS"] = f"sigterm@{half}"
    try:
        train_once(ctx, cfg, ctx.hw, folder)
        raise AssertionError("training was not interrupted")
    except training.Interrupted:
        pass
    finally:
        os.environ.pop("DIALOGSUM_FAULTS", None)
    free()
    saved = training.resume_point(folder / "checkpoints")
    trainer, result = train_once(ctx, cfg, ctx.hw, folder)
    resumed = step_losses(result.history)
    after = [s for s in resumed if s > half]
    worst = max(abs(resumed[s] - reference[s]) / max(abs(reference[s]), 1e-8) for s in after)
    record = {
        "optimizer": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "interrupted_after_step": half,
        "checkpoint_files": sorted(p.name for p in saved.iterdir()) if saved else None,
        "resumed_from": Path(result.resumed_from).name if result.resumed_from else None,
        "steps": result.steps,
        "max_relative_loss_difference_after_resume": float(f"{worst:.2e}"),
    }
    # a resumed run sums in another order: ~1e-2 apart on the CPU (tests/test_resume.py), more in 16-bit
    tolerance = 1e-2 if ctx.hw.compute_dtype == torch.float32 else 3e-2
    ok = result.resumed_from and result.steps == cfg.train.max_steps and worst <= tolerance
    record["status"] = "ok" if ok else f"failed: resumed {result.resumed_from}, losses differ by {worst:.2e}"
    del trainer
    free()
    return record


# ----------------------------------------------------------------------------------------------
# Packing


def stage_packing(ctx: Context) -> dict:
    """Padding-free batches give every example the logits it gets alone and the loss of a padded batch, with the
    attention the job picks on this device (SDPA without flash-attn) and with SDPA itself."""
    from job import modeling, prompts
    from job.training import make_collator

    record = {}
    base_cfg = config(ctx)
    hw = ctx.hw
    tokenizer = tokenizer_of(ctx, base_cfg)
    rows = sorted(dialogs.examples(12, seed=1), key=lambda e: len(e.dialogue))
    feats = []
    for e in (rows[-1], rows[0], rows[len(rows) // 2]):
        enc = prompts.encode_example(tokenizer, base_cfg.data, e.dialogue, e.summary)
        feats.append({"input_ids": enc.input_ids, "labels": enc.labels})
    attns = sorted({modeling.attention_implementation(base_cfg, hw), "sdpa"})
    for attn in attns:
        cfg = config(ctx, f"model.attn_implementation={attn}")
        model = load(ctx, cfg, hw, adapters=False)
        model.train()
        device = next(model.parameters()).device
        packed = {k: v.to(device) for k, v in make_collator("padding_free", tokenizer)(feats).items()}
        padded = {k: v.to(device) for k, v in make_collator("group_by_length", tokenizer)(feats).items()}
        with torch.no_grad():
            logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[
                0
            ]
            worst, start = 0.0, 0
            for f in feats:
                ids = torch.tensor([f["input_ids"]], device=device)
                alone = model(input_ids=ids, use_cache=False).logits[0].float()
                part = logits[start : start + ids.shape[1]].float()
                worst = max(worst, ((part - alone).abs().max() / alone.abs().max()).item())
                start += ids.shape[1]
            loss_packed = model(**packed, use_cache=False).loss.item()
            loss_padded = model(**padded, use_cache=False).loss.item()
        loss_diff = abs(loss_packed - loss_padded) / abs(loss_padded)
        tolerance = 1e-4 if hw.compute_dtype == torch.float32 else 2e-2
        record[attn] = {
            "max_relative_logit_difference": float(f"{worst:.2e}"),
            "relative_loss_difference": float(f"{loss_diff:.2e}"),
            "exact": worst <= tolerance and loss_diff <= tolerance,
        }
        del model
        free()
    record["job_attention"] = modeling.attention_implementation(base_cfg, hw)
    record["status"] = "ok" if all(v["exact"] for v in record.values() if isinstance(v, dict)) else "failed"
    return record


# ----------------------------------------------------------------------------------------------
# Generation


def _prompt_ids(ctx: Context, cfg, tokenizer, encoder_decoder: bool = False) -> list[list[int]]:
    from job import prompts

    budget = prompts.prompt_budget(cfg.data, encoder_decoder)
    examples = dialogs.examples(ctx.size.dialogues, seed=2)
    return [prompts.prompt_ids_for_generation(tokenizer, cfg.data, e.dialogue, budget) for e in examples]


def _agreement(model, tokenizer, ids, cfg, hw) -> dict:
    from job import generation

    n, batch = cfg.eval.max_new_tokens, cfg.eval.batch_size
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    sorted_out = generation.generate(
        model, tokenizer, ids, n, batch, show_progress=False, compute_dtype=hw.compute_dtype
    )
    unsorted = [list(range(k, min(k + batch, len(ids)))) for k in range(0, len(ids), batch)]
    start = time.perf_counter()
    unsorted_out = generation.generate_batches(
        model, tokenizer, ids, unsorted, n, batch, show_progress=False, compute_dtype=hw.compute_dtype
    )
    unsorted_seconds = time.perf_counter() - start
    single = generation.generate(model, tokenizer, ids, n, 1, show_progress=False, compute_dtype=hw.compute_dtype)
    same = sum(a == b for a, b in zip(sorted_out.texts, single.texts))
    return {
        "dialogues": len(ids),
        "batch_size": batch,
        "max_new_tokens": n,
        "batched_equal_to_one_at_a_time": same,
        "unsorted_equal_to_one_at_a_time": sum(a == b for a, b in zip(unsorted_out.texts, single.texts)),
        "summaries_per_second": {
            "sorted_batched": round(len(ids) / sorted_out.seconds, 3),
            "unsorted_batched": round(len(ids) / unsorted_seconds, 3),
            "one_at_a_time": round(len(ids) / single.seconds, 3),
        },
        "speedup_over_unsorted": round(unsorted_seconds / sorted_out.seconds, 2),
        "speedup_over_one_at_a_time": round(single.seconds / sorted_out.seconds, 2),
    }


def stage_generation(ctx: Context) -> dict:
    """Batched greedy summaries against one-at-a-time ones (bitsandbytes picks its kernel by batch size on CUDA):
    how many agree, on the 4-bit decoder and on the built-in T5; and sorted against unsorted batches for speed."""
    from job import builtin, modeling

    cfg = config(ctx)
    tokenizer = tokenizer_of(ctx, cfg)
    model = load(ctx, cfg, ctx.hw, adapters=False)
    record = {"decoder_4bit": _agreement(model, tokenizer, _prompt_ids(ctx, cfg, tokenizer), cfg, ctx.hw)}
    del model
    free()
    t5_dir = builtin.build("builtin:tiny-t5", common.WORK_DIR / "builtin-tiny-t5")
    t5_cfg = config(ctx, f"model.name={t5_dir}", "method=lora")
    hw = modeling.for_architecture(ctx.hw, True)
    t5 = modeling.load_base_model(t5_cfg, str(t5_dir), hw)
    t5_tok = modeling.load_tokenizer(str(t5_dir), t5_cfg)
    record["t5"] = _agreement(t5, t5_tok, _prompt_ids(ctx, t5_cfg, t5_tok, True), t5_cfg, hw)
    del t5
    free()
    record["status"] = "ok"
    return record


# ----------------------------------------------------------------------------------------------
# Merge


def stage_merge(ctx: Context) -> dict:
    """The 16-bit merge (`merge.merge_run`) against the same 16-bit base with the adapter unmerged (the merge must
    be exact to rounding) and against the 4-bit base with the adapter (what was trained and scored)."""
    import shutil

    from peft import PeftModel

    from job import merge, modeling

    cfg = config(ctx)
    run_dir = ctx.work / "merge"
    shutil.rmtree(run_dir, ignore_errors=True)
    tokenizer = tokenizer_of(ctx, cfg)
    model = load(ctx, cfg, ctx.hw)
    torch.manual_seed(1)
    with torch.no_grad():  # as if trained: LoRA B away from its zero initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    modeling.ready_for_generation(model, ctx.hw)
    modeling.save_trained(model, tokenizer, cfg, run_dir)
    ids = torch.tensor([_prompt_ids(ctx, cfg, tokenizer)[0][:128]])
    model.eval()
    with torch.no_grad():
        quantized = model(input_ids=ids.to(model.device)).logits.float().cpu()
    del model
    free()
    dest = merge.merge_run(run_dir, cfg, run_dir / "merged")
    dtype = getattr(torch, merge.merge_dtype(cfg))
    device_map = {"": 0} if ctx.cuda else None
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(dest, dtype=dtype, device_map=device_map).eval()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids.to(merged.device)).logits.float().cpu()
    del merged
    free()
    base = AutoModelForCausalLM.from_pretrained(ctx.model_dir, dtype=dtype, device_map=device_map)
    unmerged = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    with torch.no_grad():
        unmerged_logits = unmerged(input_ids=ids.to(unmerged.device)).logits.float().cpu()
    del unmerged, base
    free()

    def compare(a, b) -> dict:
        return {
            "max_relative_logit_difference": float(f"{((a - b).abs().max() / b.abs().max()).item():.2e}"),
            "argmax_agreement": round((a.argmax(-1) == b.argmax(-1)).float().mean().item(), 4),
        }

    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    exact = compare(merged_logits, unmerged_logits)
    return {
        "merge_dtype": str(dtype).removeprefix("torch."),
        "merged_vs_16bit_base_plus_adapter": exact,
        "merged_vs_4bit_base_plus_adapter": compare(merged_logits, quantized),
        "status": "ok" if exact["max_relative_logit_difference"] <= tolerance else "failed: the merge is not exact",
    }


# ----------------------------------------------------------------------------------------------
# FSDP2 in one process


def stage_fsdp(ctx: Context) -> dict:
    """The FSDP pieces on one GPU: FSDP2 through the Trainer with plain AdamW, its checkpoint files accepted by the
    resume rule, the adapter gathered whole from DTensor parameters, generation under no_grad with synced_gpus."""
    import shutil
    import socket

    import torch.distributed as td
    from safetensors.torch import load_file

    from job import generation, modeling, training

    if not ctx.cuda:
        raise Skipped("CUDA-only: accelerate switches FSDP on for CUDA processes only")
    if not td.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        td.init_process_group("nccl", rank=0, world_size=1)
    cfg = config(ctx, "train.optimizer=adamw_torch", "train.fsdp=true")
    folder = ctx.work / "fsdp"
    shutil.rmtree(folder, ignore_errors=True)
    trainer, result = train_once(ctx, cfg, ctx.hw, folder, fsdp=training.fsdp_settings())
    newest = training.complete_checkpoints(folder / "checkpoints")[0]
    model = trainer.model
    state = trainer.accelerator.get_state_dict(model)
    tokenizer = tokenizer_of(ctx, cfg)
    modeling.save_trained(model, tokenizer, cfg, folder, state)
    weights = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    modeling.ready_for_generation(model, ctx.hw)
    out = generation.generate_batches(
        model, tokenizer, _prompt_ids(ctx, cfg, tokenizer)[:4], [[0, 1], [2, 3]], 8, 2, show_progress=False,
        compute_dtype=ctx.hw.compute_dtype, synced=True,
    )  # fmt: skip
    whole = all(v.shape[0] == cfg.lora.r for k, v in weights.items() if "lora_A" in k)
    record = {
        "fsdp_enabled": bool(getattr(trainer, "is_fsdp_enabled", False)),
        "optimizer": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "steps": result.steps,
        "losses": [round(v, 5) for v in step_losses(result.history).values()],
        "checkpoint_files": sorted(p.name for p in newest.iterdir()),
        "checkpoint_loadable": training.checkpoint_loadable(newest),
        "adapter_tensors": len(weights),
        "adapter_whole": whole,
        "gathered_state_tensors": len(state),
        "generated": sum(bool(t) for t in out.texts),
        "peak_gib": peak_gib(),
    }
    ok = record["fsdp_enabled"] and record["checkpoint_loadable"] and whole and record["generated"] == 4
    record["status"] = "ok" if ok else "failed"
    del trainer, model
    td.destroy_process_group()
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(k, None)
    free()
    return record


# ----------------------------------------------------------------------------------------------
# Throughput and the memory estimate


def stage_throughput(ctx: Context) -> dict:
    """The preset's batch and length with activation checkpointing, one 4-bit model with LoRA, the same examples:
    non-padding tokens/s and peak GiB for the job's padding-free batches, group-by-length (the job's fallback),
    padding to the longest of each batch (TRL's default collator) and padding to max_length (the notebooks'); and
    the memory estimate against the fixed-padding peak, the batch x max_length tokens it assumes."""
    import random

    from transformers.trainer_pt_utils import get_length_grouped_indices

    from benchmarks.train_speed import FixedPaddingCollator, per_batch_padding_collator, tokenized
    from job import memory, modeling
    from job.training import CountingCollator, make_collator

    cfg = config(ctx, "train.optimizer=adamw_torch")
    tokenizer = tokenizer_of(ctx, cfg)
    features = tokenized(cfg, tokenizer, ctx.size.examples)
    batch, steps = cfg.train.batch_size, ctx.size.throughput_steps + 1
    order = list(range(len(features)))
    random.Random(0).shuffle(order)
    grouped = get_length_grouped_indices(
        [len(f["input_ids"]) for f in features], batch, generator=torch.Generator().manual_seed(0)
    )

    def cut(indices):
        flat = [features[indices[i % len(indices)]] for i in range(steps * batch)]
        return [flat[i : i + batch] for i in range(0, len(flat), batch)]

    pad = tokenizer.pad_token_id
    per_batch, per_batch_name = per_batch_padding_collator(tokenizer)
    arms = {
        "padding_free": (lambda: make_collator("padding_free", tokenizer), cut(order)),
        "group_by_length": (lambda: make_collator("group_by_length", tokenizer), cut(grouped)),
        "per_batch_padding": (lambda: CountingCollator(per_batch, pad), cut(order)),
        "fixed_padding": (lambda: CountingCollator(FixedPaddingCollator(pad, cfg.data.max_length), pad), cut(order)),
    }
    job_attn = modeling.attention_implementation(cfg, ctx.hw)
    record = {"batch_size": batch, "max_length": cfg.data.max_length, "steps": steps - 1, "attention": job_attn}
    record["per_batch_padding_collator"] = per_batch_name
    # padding-free on SDPA is what packing=auto's rule for this device needs measured (training.PADDING_FREE_ON_SDPA):
    # where the job's attention is another (flash-attn installed), SDPA's padding-free arm runs on its own model
    runs = [(job_attn, arms)] + ([("sdpa", {"padding_free_sdpa": arms["padding_free"]})] if job_attn != "sdpa" else [])
    for attn, measured in runs:
        model = load(ctx, config(ctx, "train.optimizer=adamw_torch", f"model.attn_implementation={attn}"), ctx.hw)
        model.config.use_cache = False
        model.train()
        for name, (make, batches) in measured.items():
            record[name] = _throughput_arm(ctx, model, cfg, make, batches)
            free()
        del model
        free()
    rate = {k: record[k]["tokens_per_second"] for k in arms}
    sdpa_rate = record.get("padding_free_sdpa", record["padding_free"])["tokens_per_second"]
    record["ratios"] = {
        "padding_free_over_per_batch_padding": round(rate["padding_free"] / rate["per_batch_padding"], 2),
        "padding_free_over_group_by_length": round(rate["padding_free"] / rate["group_by_length"], 2),
        "padding_free_over_fixed_padding": round(rate["padding_free"] / rate["fixed_padding"], 2),
    }
    # the figure that decides PADDING_FREE_ON_SDPA for this device (with the packing stage's `sdpa` exactness)
    record["padding_free_on_sdpa_over_group_by_length"] = round(sdpa_rate / rate["group_by_length"], 2)
    estimate = memory.estimate_gpu_memory(cfg, memory.architecture(str(ctx.model_dir)))
    training_estimate = estimate["total"] - estimate["cuda_overhead"]
    if estimate["generation"] > estimate["activations"] + estimate["logits"] + estimate["lm_head_copy"]:
        training_estimate -= estimate["generation"] - (
            estimate["activations"] + estimate["logits"] + estimate["lm_head_copy"]
        )
    measured = record["fixed_padding"]["peak_gib"]
    record["memory"] = {
        "estimate_gib": estimate,
        "estimated_training_peak_gib": round(training_estimate, 2),
        "measured_fixed_padding_peak_gib": measured,
        "estimate_over_measured": round(training_estimate / measured, 2) if measured else None,
        "note": None if measured else "no CUDA peak to compare on this device (skipped)",
    }
    record["status"] = "ok"
    return record


def _throughput_arm(ctx: Context, model, cfg, make, batches) -> dict:
    """One untimed step, then the timed steps with a fresh AdamW: non-padding tokens/s, padding, peak GiB."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    amp = torch.autocast("cuda", dtype=ctx.hw.compute_dtype) if ctx.cuda else torch.autocast("cpu", enabled=False)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate)

    def step(b):
        with amp:
            loss = model(**{k: v.to(device) for k, v in b.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(make()(batches[0]))
    collator = make()
    reset_peak()
    if ctx.cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches[1:]:
        step(collator(b))
    if ctx.cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "tokens_per_second": round(collator.real / seconds, 1),
        "padding_fraction": round(1 - collator.real / collator.total, 4),
        "peak_gib": peak_gib(),
    }


# ----------------------------------------------------------------------------------------------
# Driver


RUNNERS = {
    "train_bf16": lambda ctx: stage_train(ctx, torch.bfloat16 if ctx.cuda else torch.float32),
    "train_fp16": lambda ctx: stage_train(ctx, torch.float16),
    "resume": stage_resume,
    "packing": stage_packing,
    "generation": stage_generation,
    "merge": stage_merge,
    "fsdp": stage_fsdp,
    "throughput": stage_throughput,
}


def write(out: Path, record: dict) -> None:
    """Merge this run's record into `out` under `gpu`, keeping stages this run did not touch."""
    results = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    previous = results.get(KEY, {})
    stages = {**previous.get("stages", {}), **record["stages"]}
    results[KEY] = {**previous, **record, "stages": stages}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    partial.replace(out)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="every stage at a tiny size on whatever device is there")
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--out", type=Path, default=None, help=f"results file (default {DEFAULT_OUT}; --tiny: {TINY_OUT})")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := sorted(set(args.stages) - set(STAGES)):
        p.error(f"--only: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    args.out = args.out or (TINY_OUT if args.tiny else DEFAULT_OUT)
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    ctx = context(args.tiny)
    record = {
        "date": common.now(),
        "device": ctx.hw.name,
        "compute_dtype": str(ctx.hw.compute_dtype).removeprefix("torch."),
        "model": "builtin:tiny-llama" if ctx.tiny else f"random weights in {CONFIG_3B.name}'s shape",
        "tiny": ctx.tiny,
        "versions": common.versions(),
        "stages": {},
    }
    failed = 0
    for name in args.stages:
        start = time.perf_counter()
        log.info("stage %s", name)
        try:
            result = RUNNERS[name](ctx)
        except Skipped as e:
            result = {"status": f"skipped: {e}"}
        except Exception as e:  # a stage that breaks is a result too; the next stage still runs
            log.error("stage %s failed:\n%s", name, traceback.format_exc())
            result = {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            free()
        result = {"date": common.now(), "seconds": round(time.perf_counter() - start, 1), **result}
        failed += result["status"].startswith("failed")
        record["stages"] = {name: result}
        write(args.out, record)
        log.info("stage %s: %s (%.1f s)", name, result["status"], result["seconds"])
    print(f"written to {args.out} under {KEY!r}")
    return 1 if failed else 0
