"""Training with transformers' Trainer: tokenized examples with summary-only labels, padding-free packing or
length-grouped batches, `metrics:` log lines, TensorBoard in the run folder, checkpoints marked complete, resume,
and a checkpoint on SIGTERM."""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainingArguments

from job import distributed, faults, logs, prompts, runtime, watchdog
from job.config import Config
from job.errors import ConfigInputError, ResourceError, TrainingError
from job.modeling import Hardware

log = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint-complete.json"


@dataclass
class TrainResult:
    loss: float | None
    eval_loss: float | None
    steps: int
    epochs: float
    seconds: float
    tokens_per_second: float
    padding_fraction: float
    peak_memory_mb: float
    history: list[dict] = field(default_factory=list)
    resumed_from: str | None = None
    truncated_examples: int = 0


class Interrupted(Exception):
    """SIGTERM arrived during training; a checkpoint was saved."""


# ----------------------------------------------------------------------------------------------
# Data


def tokenize(ds, tokenizer, cfg: Config, desc: str, encoder_decoder: bool = False):
    """Tokenized examples with `input_ids`, `labels` and `length`; returns (dataset, number truncated)."""

    def encode(row):
        enc = prompts.encode_example(tokenizer, cfg.data, row["dialogue"], row["summary"], encoder_decoder)
        return {
            "input_ids": enc.input_ids,
            "labels": enc.labels,
            "length": len(enc.input_ids),
            "truncated": enc.truncated,
        }

    out = ds.map(encode, remove_columns=ds.column_names, desc=desc)
    truncated = int(sum(out["truncated"]))
    if truncated:
        log.warning(
            "%s: %d of %d examples were longer than data.max_length=%d; their dialogues were cut (never the summary)",
            desc,
            truncated,
            len(out),
            cfg.data.max_length,
        )
    return out.remove_columns("truncated"), truncated


# Padding-free packing on SDPA (and eager), by device: True only where it was measured faster than group-by-length.
# Without a cache and an attention mask, transformers' masking_utils builds the block-diagonal mask from the position
# ids for these kernels, so packing is exact there (tests/test_packing.py, on the device the tests run on); but SDPA
# then computes the whole packed row's attention under that mask, where flash attention's variable-length kernel
# skips the cross-example blocks, so whether it pays depends on the device and the model. The CPU: padding-free
# 0.90x group-by-length (median of 5 paired repeats, 0.73x to 1.61x; `python -m benchmarks --size small`,
# 2026-12-04, docs/speed.md): not faster. CUDA: not measured yet; the throughput stage of `python -m benchmarks gpu`
# measures it (`padding_free_on_sdpa_over_group_by_length`, with the packing stage's `sdpa` exactness), and only
# such a recorded figure changes an entry here.
PADDING_FREE_ON_SDPA: dict[str, bool] = {"cpu": False, "cuda": False}


def packing_mode(cfg: Config, hw: Hardware, attn: str, encoder_decoder: bool = False) -> str:
    """Padding-free packing needs an attention kernel that keeps packed examples apart and pays for itself: flash
    attention (installed, on a GPU), or SDPA/eager with the cache off where `PADDING_FREE_ON_SDPA` says it was
    measured faster than group-by-length (no device so far). Elsewhere group by length.
    Encoder-decoder models and soft prompts (prepended to every row) always group by length."""
    if encoder_decoder or cfg.method == "prompt_tuning":
        if cfg.train.packing == "padding_free":
            log.warning(
                "padding-free packing does not apply to encoder-decoder models or soft prompts: grouping by length"
            )
        return "group_by_length" if cfg.train.packing != "none" else "none"
    if cfg.train.packing != "auto":
        return cfg.train.packing
    if attn == "flash_attention_2":
        return "padding_free"
    if attn in ("sdpa", "eager") and PADDING_FREE_ON_SDPA.get(hw.device, False):
        return "padding_free"
    return "group_by_length"


class CountingCollator:
    """Wraps a collator and counts real and padded tokens fed to the model (for padding_fraction)."""

    def __init__(self, inner, pad_id: int | None):
        self.inner = inner
        self.pad_id = pad_id
        self.real = 0
        self.total = 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.total += batch["input_ids"].numel()
        return batch


def make_collator(mode: str, tokenizer, encoder_decoder_model=None):
    """Padding-free packing or dynamic padding (labels padded with -100; decoder inputs built for encoder-decoders)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if mode == "padding_free":
        inner = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        inner = DataCollatorForSeq2Seq(
            tokenizer, model=encoder_decoder_model, padding=True, label_pad_token_id=-100, return_tensors="pt"
        )
    return CountingCollator(inner, tokenizer.pad_token_id)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints marked complete, newest first (a half-written one has no marker and is never loaded)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.rsplit("-", 1)[-1]
        if step.isdigit() and (path / COMPLETE_MARKER).is_file():
            found.append((int(step), path))
    return [p for _, p in sorted(found, reverse=True)]


# What a resume reads, as the Trainer writes it: `optimizer.pt` without FSDP; under FSDP accelerate writes
# `optimizer.bin` (full state dict) or an `optimizer_0/` folder (sharded), and the model as safetensors (the adapter)
# or `pytorch_model_fsdp*` (a .bin file or a sharded folder).
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
OPTIMIZER_FOLDER = "optimizer_0"
FSDP_MODEL_PREFIX = "pytorch_model_fsdp"


def checkpoint_loadable(path: Path) -> bool:
    """The files a resume reads exist (as written with or without FSDP) and the weights parse."""
    from safetensors import safe_open

    has_optimizer = any((path / f).is_file() for f in OPTIMIZER_FILES) or (path / OPTIMIZER_FOLDER).is_dir()
    if not has_optimizer or not (path / "trainer_state.json").is_file() or not (path / "scheduler.pt").is_file():
        return False
    weights = list(path.glob("*.safetensors"))
    fsdp_weights = [p for p in path.glob(FSDP_MODEL_PREFIX + "*") if p.suffix == ".bin" or p.is_dir()]
    if not weights and not fsdp_weights:
        return False
    try:
        for w in weights:
            with safe_open(str(w), framework="pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
        for w in fsdp_weights:
            if w.is_file():
                torch.load(w, map_location="cpu", weights_only=True)
            elif not any(w.iterdir()):
                return False
        json.loads((path / "trainer_state.json").read_text())
    except Exception:
        return False
    return True


def resume_point(folder: Path) -> Path | None:
    """The newest complete checkpoint that reads back; None when there is none. Checkpoints that are all marked
    complete yet unreadable stop the run: starting over silently would throw their steps away."""
    complete = complete_checkpoints(folder)
    for path in complete:
        if checkpoint_loadable(path):
            return path
        log.warning("checkpoint %s is marked complete but cannot be read; trying an older one", path)
    if complete:
        raise TrainingError(
            f"none of the {len(complete)} complete checkpoints in {folder} can be read, so the run cannot resume; "
            f"move or delete {folder} to start training over"
        )
    return None


def refuse_foreign_checkpoints(cfg: Config, folder: Path) -> None:
    """Before anything loads: a complete checkpoint in `folder` trained with other weight-shaping settings (the
    config changed before a restart; another trial of a tuning job) is never resumed. Checkpoints written before
    markers carried a hash are resumed as they always were."""
    expected = cfg.weights_hash()
    for path in complete_checkpoints(folder):
        try:
            marker = json.loads((path / COMPLETE_MARKER).read_text())
        except (OSError, ValueError):
            continue  # an unreadable marker: resume_point's checks decide about this checkpoint
        found = marker.get("config_hash")
        if found is None or found == expected:
            continue
        theirs, ours = marker.get("config") or {}, cfg.weights_config()
        changed = [f"{k} {theirs.get(k)!r} -> {ours.get(k)!r}" for k in sorted(set(theirs) | set(ours))
                   if theirs.get(k) != ours.get(k)]  # fmt: skip
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ConfigInputError(
            f"{path} was trained with another config (config hash {found}, this run's {expected}"
            + (f": {shown}" if shown else "")
            + f"), so this run does not resume it; restore those settings to resume, or use another "
            f"output.run_name or train.checkpoint_dir (or move {folder} away) to train from the start"
        )


def relocate_best_checkpoint(resume: Path) -> None:
    """A checkpoint folder copied in from elsewhere (Kaggle's next session, SageMaker's restore from S3) records the
    best checkpoint under its old path, which the Trainer drops (or, where it still exists, reads from another run's
    folder); point it at the copy beside the resume point.
    The state file is replaced whole, never half-written."""
    state_file = resume / "trainer_state.json"
    state = json.loads(state_file.read_text())
    best = state.get("best_model_checkpoint")
    if not best:
        return
    moved = resume.parent / Path(best).name
    if Path(best) == moved or not (moved / COMPLETE_MARKER).is_file():
        return
    state["best_model_checkpoint"] = str(moved)
    partial = state_file.with_name(state_file.name + ".partial")
    partial.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    partial.replace(state_file)
    log.info("best checkpoint so far: %s (recorded as %s before the folder was moved)", moved, best)


# ----------------------------------------------------------------------------------------------
# Callbacks


class MetricsLines(TrainerCallback):
    """`metrics:` lines for consoles and SageMaker metric definitions; stops on a non-finite loss."""

    def on_log(self, args, state, control, logs_=None, **kwargs):
        values = kwargs.get("logs") or logs_ or {}
        if not state.is_world_process_zero:
            return
        if "loss" in values:
            loss = float(values["loss"])
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {loss} at step {state.global_step}; lower train.learning_rate "
                    f"(now {args.learning_rate}) or use fp32 compute (model.compute_dtype=float32) on GPUs "
                    f"without bf16"
                )
            logs.emit_metrics(
                {
                    "step": state.global_step,
                    "loss": loss,
                    "learning_rate": values.get("learning_rate"),
                    "grad_norm": values.get("grad_norm"),
                }
            )
        if "eval_loss" in values:
            logs.emit_metrics({"step": state.global_step, "eval_loss": float(values["eval_loss"])})


def mark_complete(path: Path, step: int, marker: dict) -> None:
    """The checkpoint's marker: its step and the hash of what shapes the weights (MarkComplete.marker)."""
    (path / COMPLETE_MARKER).write_text(json.dumps({"step": step, **marker}))
    log.info("checkpoint saved: %s", path)


class MarkComplete(TrainerCallback):
    """A checkpoint is only complete once the Trainer has written all of it. Its marker records the hash of what
    shapes the weights (and those values), which a resume must match (`refuse_foreign_checkpoints`)."""

    def __init__(self, cfg: Config):
        self.marker = {"config_hash": cfg.weights_hash(), "config": cfg.weights_config()}

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and path.is_dir():
            mark_complete(path, state.global_step, self.marker)


class Heartbeats(TrainerCallback):
    """Progress for the watchdog (job/watchdog.py): optimizer steps, validation batches, checkpoints. Knows whether
    the optimizer is updating the weights, when a checkpoint would hold half-updated ones."""

    def __init__(self):
        self.in_optimizer_step = False

    def on_step_end(self, args, state, control, **kwargs):
        watchdog.beat(f"optimizer step {state.global_step}")

    def on_prediction_step(self, args, state, control, **kwargs):
        watchdog.beat(f"a validation batch after step {state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        watchdog.beat(f"the checkpoint of step {state.global_step}")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.in_optimizer_step = True

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.in_optimizer_step = False


def stalled_checkpoint(trainer, beats: Heartbeats, checkpoint_dir: Path, marker: dict | None = None) -> str:
    """The watchdog's last checkpoint of a stalled run (from its thread, the training loop stuck): the weights,
    optimizer, scheduler and trainer state of the last finished optimizer step, marked complete. Only where that is
    safe: one process (under torchrun a save waits for every rank, and a rank is what hangs), outside the optimizer
    step (the weights half updated)."""
    step = trainer.state.global_step
    kept = f"the newest complete checkpoint in {checkpoint_dir} is kept"
    if distributed.enabled():
        return f"no checkpoint: under torchrun saving one waits for every rank, and a rank is what hangs; {kept}"
    if beats.in_optimizer_step:
        return f"no checkpoint: the stall is inside optimizer step {step + 1}, with the weights half updated; {kept}"
    if step == 0:
        return "no checkpoint: no optimizer step had finished"
    path = checkpoint_dir / f"checkpoint-{step}"
    if (path / COMPLETE_MARKER).is_file():
        return f"checkpoint of step {step} already saved in {path}"
    trainer._save_checkpoint(trainer.model, trial=None)  # what the Trainer's own saves call
    mark_complete(path, step, marker or {})
    return f"checkpoint of step {step} saved in {path}"


class StopOnSigterm(TrainerCallback):
    """SageMaker (spot interruption, StopTrainingJob) and `docker stop` send SIGTERM, then SIGKILL after a grace
    period: save a checkpoint at the end of the current step and stop. Under torchrun every rank stops after the
    same step (the signal can reach the ranks a step apart, or one alone, and a rank that stopped alone would
    leave the others waiting in their next all-reduce)."""

    def __init__(self):
        self.signalled = False  # this process received SIGTERM
        self.requested = False  # training stopped because of it (on every rank at the same step)
        self.previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        def handler(signum, frame):
            log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
            self.signalled = True

        self.previous = signal.signal(signal.SIGTERM, handler)

    def on_step_end(self, args, state, control, **kwargs):
        faults.inject("train_step", step=state.global_step, model=kwargs.get("model"), control=control)
        stop = self.signalled
        if distributed.enabled():
            stop = distributed.max_all(float(stop)) > 0
            if stop and not self.signalled:
                log.warning("another rank received SIGTERM: saving a checkpoint after this step, then stopping")
        if stop:
            self.requested = True
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


# ----------------------------------------------------------------------------------------------
# Trainer


class _UncountedValidation:
    """Validation batches go through the collator inside the `CountingCollator`, so only training batches are
    counted as training tokens."""

    def get_eval_dataloader(self, eval_dataset=None):
        counting = self.data_collator
        self.data_collator = counting.inner
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = counting


class CountingTrainer(_UncountedValidation, Trainer):
    """The Trainer of decoder-only models, fed through a `CountingCollator`."""


class CountingSeq2SeqTrainer(_UncountedValidation, Seq2SeqTrainer):
    """The Trainer of encoder-decoder models, fed through a `CountingCollator`."""


class Schedule(NamedTuple):
    """Optimizer steps in all, and the intervals between validations and between checkpoints."""

    total: int
    eval_every: int
    save_every: int


def schedule(cfg: Config, n_train: int) -> Schedule:
    """The run's steps; checkpoints fall on validation steps where best-model tracking needs them to."""
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(n_train / per_step * cfg.train.epochs)
    eval_every = cfg.train.eval_steps or max(1, total // 4)
    save_every = cfg.train.save_steps or eval_every
    if cfg.train.best_by_eval_loss and save_every % eval_every:
        save_every = max(eval_every, (save_every // eval_every) * eval_every)
    return Schedule(total, eval_every, save_every)


def fsdp_active(cfg: Config, hw: Hardware) -> bool:
    """FSDP shards only CUDA processes under torchrun: on CPU processes accelerate runs DDP whatever the setting."""
    return cfg.train.fsdp and runtime.distributed() and hw.device == "cuda"


def check_fsdp(cfg: Config, cuda: bool, processes: int) -> None:
    """Each piece of FSDP is right by construction (optimizer, device, generation, save, resume), but no run on
    several GPUs has proved them together yet: refuse that case up front rather than spend GPU hours on it."""
    if cfg.train.fsdp and cuda and processes > 1:
        raise ConfigInputError(
            f"train.fsdp=true with {processes} CUDA processes has not been proved on several GPUs yet; set "
            f"train.fsdp=false (each GPU then trains a whole 4-bit copy with DDP) or run on one GPU"
        )


def fsdp_settings() -> dict:
    """The Trainer's FSDP arguments: FSDP2 (per-parameter sharding, which keeps frozen 4-bit and trainable LoRA
    weights apart), full sharding wrapped per transformer block, and a full state dict so the saved adapter is
    whole. Every rank loads its own copy onto its GPU (the model is scored before training, on the GPU), so no
    rank-0 loading and broadcast."""
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "reshard_after_forward": True,
            "cpu_ram_efficient_loading": False,
            "state_dict_type": "FULL_STATE_DICT",
        },
    }


def fsdp_arguments(cfg: Config, hw: Hardware) -> dict:
    if not cfg.train.fsdp:
        return {}
    if not runtime.distributed():
        log.warning("train.fsdp=true without torchrun: a single process has nothing to shard; training without FSDP")
        return {}
    if hw.device != "cuda":
        log.warning("train.fsdp=true on CPU processes: FSDP shards CUDA processes only; training with DDP")
        return {}
    return fsdp_settings()


def optimizer_name(cfg: Config, hw: Hardware) -> str:
    """`auto`: paged 8-bit AdamW for qlora on a GPU; plain AdamW under FSDP (bitsandbytes' optimizers do not take
    FSDP2's DTensor parameters) and elsewhere."""
    if cfg.train.optimizer != "auto":
        return cfg.train.optimizer
    if fsdp_active(cfg, hw):
        return "adamw_torch"
    return "paged_adamw_8bit" if (hw.device == "cuda" and cfg.method == "qlora") else "adamw_torch"


def training_arguments(
    cfg: Config,
    hw: Hardware,
    checkpoint_dir: Path,
    steps: Schedule,
    mode: str,
    *,
    validating: bool,
    encoder_decoder: bool,
    fsdp: dict | None = None,
) -> TrainingArguments:
    """Every Trainer setting of the run, from the config, the hardware, the step schedule and the batch layout
    (`packing_mode`). `fsdp`: FSDP settings to use whatever the process count (`python -m benchmarks gpu` runs
    FSDP2 in one process); None: `fsdp_arguments`."""
    args_cls = Seq2SeqTrainingArguments if encoder_decoder else TrainingArguments
    return args_cls(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        num_train_epochs=cfg.train.epochs,
        max_steps=steps.total,
        learning_rate=cfg.train.learning_rate,
        lr_scheduler_type=cfg.train.lr_scheduler,
        warmup_steps=cfg.train.warmup_ratio,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        optim=optimizer_name(cfg, hw),
        bf16=hw.device == "cuda" and hw.compute_dtype == torch.bfloat16,
        fp16=hw.device == "cuda" and hw.compute_dtype == torch.float16,
        use_cpu=hw.device == "cpu",
        logging_steps=cfg.train.logging_steps,
        eval_strategy="steps" if validating else "no",
        eval_steps=steps.eval_every,
        save_strategy="steps",
        save_steps=steps.save_every,
        save_total_limit=cfg.train.save_total_limit,
        load_best_model_at_end=cfg.train.best_by_eval_loss and validating,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        train_sampling_strategy="group_by_length" if mode == "group_by_length" else "random",
        length_column_name="length",
        remove_unused_columns=False,
        # activation checkpointing is left off here: it is enabled on the model before LoRA is attached
        ddp_find_unused_parameters=False,  # only LoRA weights train, all of them every step
        **(fsdp if fsdp is not None else fsdp_arguments(cfg, hw)),
        report_to="none",
        logging_nan_inf_filter=False,  # the filter logs a NaN loss as 0 and the run would finish with NaN weights
        seed=cfg.train.seed,
        data_seed=cfg.train.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


# ----------------------------------------------------------------------------------------------
# Training


def train(
    model,
    tokenizer,
    splits,
    cfg: Config,
    hw: Hardware,
    run_dir: Path,
    checkpoint_dir: Path,
    attn: str,
    fsdp: dict | None = None,
):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    enc_dec = bool(model.config.is_encoder_decoder)
    train_ds, truncated = tokenize(splits["train"], tokenizer, cfg, "tokenizing train", enc_dec)
    eval_ds = None
    if "validation" in splits:
        eval_ds, _ = tokenize(splits["validation"], tokenizer, cfg, "tokenizing validation", enc_dec)
    mode = packing_mode(cfg, hw, attn, enc_dec)
    collator = make_collator(mode, tokenizer, model if enc_dec else None)
    steps = schedule(cfg, len(train_ds))
    world = runtime.world_size()
    log.info(
        "batches: %s; %d optimizer steps; effective batch %d (batch_size %d x accumulation %d x %d processes)",
        mode,
        steps.total,
        cfg.train.batch_size * cfg.train.gradient_accumulation_steps * world,
        cfg.train.batch_size,
        cfg.train.gradient_accumulation_steps,
        world,
    )
    model.config.use_cache = False  # packed sequences are only kept apart without a cache; training needs none
    args = training_arguments(
        cfg, hw, checkpoint_dir, steps, mode, validating=eval_ds is not None, encoder_decoder=enc_dec, fsdp=fsdp
    )
    main = runtime.is_main_process()
    events = Path(cfg.output.tensorboard_dir) if cfg.output.tensorboard_dir else run_dir / "tensorboard"
    writer = SummaryWriter(log_dir=str(events)) if main else None
    sigterm, beats, complete = StopOnSigterm(), Heartbeats(), MarkComplete(cfg)
    callbacks = [MetricsLines(), complete, beats, sigterm]  # a beat before the faults of a step fire
    callbacks += [TensorBoardCallback(tb_writer=writer)] if main else []
    columns = ["input_ids", "labels"]
    trainer = (CountingSeq2SeqTrainer if enc_dec else CountingTrainer)(
        model=model,
        args=args,
        train_dataset=train_ds.select_columns(columns + (["length"] if mode == "group_by_length" else [])),
        eval_dataset=eval_ds.select_columns(columns) if eval_ds is not None else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    resume = resume_point(checkpoint_dir)
    if resume is not None:
        log.info("resuming from checkpoint %s", resume)
        if main:
            relocate_best_checkpoint(resume)
        distributed.barrier()  # every rank reads the same state
    if hw.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        with watchdog.watching("training", lambda: stalled_checkpoint(trainer, beats, checkpoint_dir, complete.marker)):
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except torch.cuda.OutOfMemoryError:
        raise ResourceError(
            f"the GPU ({hw.name}) ran out of memory while training; lower train.batch_size (now "
            f"{cfg.train.batch_size}, raise train.gradient_accumulation_steps to keep the effective batch) or "
            f"data.max_length (now {cfg.data.max_length}), or keep train.gradient_checkpointing=true. The newest "
            f"checkpoint in {checkpoint_dir} is kept."
        ) from None
    finally:
        if writer is not None:
            writer.close()
            if events != run_dir / "tensorboard":  # synced elsewhere while training; the run folder keeps a copy
                shutil.copytree(events, run_dir / "tensorboard", dirs_exist_ok=True)
    seconds = time.perf_counter() - start
    if sigterm.requested or (sigterm.signalled and not distributed.enabled()):
        raise Interrupted(
            f"stopped by SIGTERM at step {trainer.state.global_step}; checkpoint saved in {checkpoint_dir}"
        )
    return trainer, _result(trainer, output, collator, hw, seconds, resume, truncated)


def _result(trainer, output, collator: CountingCollator, hw: Hardware, seconds: float, resume, truncated: int):
    """What the run reports about its training: losses, throughput, memory."""
    history = trainer.state.log_history
    # tokens/s over the training steps: validation passes are timed by the Trainer and taken out
    step_seconds = seconds - sum(h.get("eval_runtime", 0.0) for h in history)
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    best_eval = (
        trainer.state.best_metric
        if trainer.state.best_metric is not None
        else (eval_losses[-1] if eval_losses else None)
    )
    real, fed = distributed.sum_all(collator.real, collator.total)
    # after a resume the Trainer averages only the steps it ran; the logged losses cover the whole run
    loss = (sum(losses) / len(losses)) if (resume and losses) else (float(output.training_loss) if losses else None)
    return TrainResult(
        loss=loss,
        eval_loss=float(best_eval) if best_eval is not None else None,
        steps=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0.0),
        seconds=seconds,
        tokens_per_second=real / step_seconds if step_seconds > 0 else 0.0,
        padding_fraction=1 - real / fed if fed else 0.0,
        peak_memory_mb=distributed.max_all(peak_memory_mb(hw)),
        history=history,
        resumed_from=str(resume) if resume else None,
        truncated_examples=truncated,
    )


def peak_memory_mb(hw: Hardware) -> float:
    if hw.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def remove_checkpoints(checkpoint_dir: Path, run_dir: Path) -> None:
    """Drop the checkpoints of a finished run when they live inside it (the adapter is saved)."""
    if checkpoint_dir.is_dir() and run_dir in checkpoint_dir.parents:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
