"""`python -m job train`: resolve config -> load data -> load model -> score the base -> train -> score the
fine-tuned model -> write the run folder (manifest last) -> publish."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from job import cli, runtime
from job.config import Config

if TYPE_CHECKING:
    from job.generation import Generated
    from job.modeling import Hardware
    from job.training import TrainResult

log = logging.getLogger("job.train")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.config_parser(
        "python -m job train",
        "Fine-tune with QLoRA/LoRA, score ROUGE for the base and the fine-tuned model, write the run folder "
        "<output.uri>/<run_name> (adapter/, metrics.json, predictions.jsonl, report.md, loss.png, tensorboard/, "
        "config.yaml, manifest.json last) and publish it when output.uri is s3:// or hf://. The last line printed is "
        "the run folder's path.",
    )
    return parser.parse_known_args(argv)


def main(argv: list[str]) -> int:
    args, overrides = parse_args(argv)
    pinned = runtime.pin_single_gpu()  # before torch touches CUDA
    cfg = cli.resolve_config(args.config, overrides)
    if pinned:
        log.warning(pinned)
    from job import tracking

    with tracking.ended_on_failure():  # a run that fails or is stopped ends its MLflow run FAILED or KILLED
        run_dir = run(cfg)
    if run_dir is not None:
        print(run_dir, flush=True)
    return 0


def run(cfg: Config) -> Path | None:
    """The whole job; returns the run folder (None on the helper ranks of a torchrun job)."""
    from job import distributed, rundir, tracking, watchdog

    started_at, t0 = rundir.now(), time.perf_counter()
    distributed.setup()
    run_dir, hw = prepare_run(cfg)
    splits, dialogues = load_data(cfg)
    create_run_folder(cfg, run_dir)
    watchdog.start(cfg.train.stall_minutes, run_dir)  # it watches training and generation (`summarize`)
    tracker = tracking.start(cfg, run_dir)  # MLflow, when output.mlflow or MLFLOW_TRACKING_URI names where

    loaded = load_model(cfg, run_dir, hw)
    prompt_ids = generation_prompts(cfg, loaded.tokenizer, loaded.encoder_decoder, dialogues)
    baseline_ids = baseline_prompts(cfg, loaded, splits["train"], dialogues)  # one that cannot fit stops us here
    base = summarize(cfg, loaded, prompt_ids, "base model summaries") if cfg.eval.base else None
    baselines = {name: summarize(cfg, loaded, ids, f"{name} baseline") for name, ids in baseline_ids.items()}

    checkpoint_dir = checkpoint_folder(cfg, run_dir)
    loaded.model, result = fine_tune(cfg, loaded, splits, run_dir, checkpoint_dir)
    tuned = summarize(cfg, loaded, prompt_ids, "fine-tuned summaries")
    if not runtime.is_main_process():  # rank 0 scores, writes and publishes alone; the others wait for it in cleanup()
        distributed.cleanup()
        return None

    summaries = Summaries(base=base, finetuned=tuned, baselines=baselines)
    scores = score_summaries(cfg, dialogues, summaries)
    metrics = run_metrics(cfg, run_dir, started_at, t0, loaded, result, dialogues, summaries, scores)
    _write_results(run_dir, cfg, metrics, prediction_rows(dialogues, summaries), result.history)
    finish_run_folder(cfg, run_dir, checkpoint_dir)
    _print_final_metrics(metrics, cfg)
    rundir.write_manifest(run_dir, cfg, started_at)  # last: a folder with a manifest is a complete run
    tracker.finish()  # the final figures and the artifacts; a server that is away costs a warning, never the run
    log.info("run complete: %s", run_dir)
    publish_run(cfg, run_dir)
    distributed.cleanup()
    return run_dir


@dataclass
class Loaded:
    """The model being scored and trained, its tokenizer, and what loading it settled."""

    model: Any
    tokenizer: Any
    hw: Hardware  # adjusted to the architecture
    attn: str
    encoder_decoder: bool


@dataclass
class Summaries:
    """What each scored model wrote, one text per scored dialogue, in their order."""

    base: Generated | None
    finetuned: Generated
    baselines: dict[str, Generated]


def prepare_run(cfg: Config) -> tuple[Path, Hardware]:
    """Name the run, check what can fail before any data or weights load (rank 0; the other ranks follow it or are
    stopped with it), and detect the hardware."""
    from job import distributed, modeling, preflight, rundir, secrets, tracking, training

    training.check_fsdp(cfg, cuda=torch_cuda_available(), processes=runtime.world_size())  # every rank alike
    if cfg.output.run_name is None:
        cfg.output.run_name = distributed.broadcast(runtime.default_run_name(cfg.hash()))
    run_dir = rundir.run_path(cfg)
    check_tuning_objective(cfg, runtime.tuning_objective())
    training.refuse_foreign_checkpoints(cfg, checkpoint_folder(cfg, run_dir))
    token = secrets.resolve_hf_token()
    if runtime.is_main_process():  # one probe write, one Hub check
        preflight.check(cfg, token)
        tracking.check(cfg)
    return run_dir, modeling.detect_hardware(cfg.model.compute_dtype)


def check_tuning_objective(cfg: Config, objective: str | None) -> None:
    """A tuning trial's objective (`validation:rougeL`) is a score of the split this run scores, which is never the
    test split: refused before anything loads otherwise."""
    from job.errors import ConfigInputError
    from job.scoring import METRICS

    if objective is None:
        return
    split, _, metric = objective.partition(":")
    if split != cfg.scored_split or split == cfg.data.test_split or metric not in METRICS:
        raise ConfigInputError(
            f"the tuning objective {objective} is not a score this run prints: a trial scores eval.split "
            f"(now {cfg.scored_split}), which must not be the test split ({cfg.data.test_split}), and the objective "
            f"is <eval.split>:<{'|'.join(METRICS)}>; launch the tuning job with `python -m launch sagemaker tune`"
        )


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_data(cfg: Config) -> tuple[dict, list]:
    """The train (and validation) splits, capped, and the dialogues to score with all their references."""
    from job import data

    splits = data.load_splits(cfg.data, cfg.train.seed)
    splits["train"] = data.cap(splits["train"], cfg.data.max_train_examples, cfg.train.seed)
    if "validation" in splits:
        splits["validation"] = data.cap(splits["validation"], cfg.data.max_eval_examples, cfg.train.seed)
    eval_split = splits["test"] if (cfg.eval.split in (None, cfg.data.test_split)) else _extra_split(cfg)
    dialogues = data.unique_dialogues(eval_split, cfg.eval.num_dialogues)
    log.info(
        "data: %d train, %d validation rows; scoring %d dialogues with %d references",
        len(splits["train"]),
        len(splits.get("validation", [])),
        len(dialogues),
        sum(len(d.references) for d in dialogues),
    )
    return splits, dialogues


def create_run_folder(cfg: Config, run_dir: Path) -> None:
    """Rank 0 creates (or reopens, to resume) the run folder with the resolved config and a built-in base model."""
    from job import distributed, modeling, rundir

    if runtime.is_main_process():
        rundir.prepare(cfg)
        log.info("run folder: %s", run_dir)
        (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        modeling.resolve_model_path(cfg, run_dir)  # a built-in model is written once, by rank 0
    distributed.barrier()


def load_model(cfg: Config, run_dir: Path, hw: Hardware) -> Loaded:
    """The base model and its tokenizer, in the compute dtype its architecture allows on this hardware."""
    from job import faults, modeling

    faults.inject("load_model", cfg=cfg)
    path = modeling.resolve_model_path(cfg, run_dir)
    enc_dec = modeling.is_encoder_decoder(path, cfg)
    hw = modeling.for_architecture(hw, enc_dec)
    tokenizer = modeling.load_tokenizer(path, cfg)
    model = modeling.load_base_model(cfg, path, hw)
    attn = modeling.attention_implementation(cfg, hw)
    return Loaded(model=model, tokenizer=tokenizer, hw=hw, attn=attn, encoder_decoder=enc_dec)


def generation_prompts(cfg: Config, tokenizer, enc_dec: bool, dialogues: list) -> list[list[int]]:
    """The zero-shot prompt of each scored dialogue, cut to leave room for the summary."""
    from job import prompts

    max_prompt = prompts.prompt_budget(cfg.data, enc_dec)
    fitted = [prompts.fit_prompt(tokenizer, cfg.data, d.dialogue, max_prompt) for d in dialogues]
    if cut := sum(truncated for _, truncated in fitted):
        log.warning(
            "generation: %d of %d scored prompts were longer than %d tokens; their dialogues were cut",
            cut,
            len(fitted),
            max_prompt,
        )
    return [ids for ids, _ in fitted]


def summarize(cfg: Config, loaded: Loaded, ids: list[list[int]], desc: str) -> Generated:
    """Greedy summaries of the prompts, shared across the ranks."""
    from job import generation, training, watchdog

    with watchdog.watching(f"generating {desc}"):
        return generation.generate_across_ranks(
            loaded.model,
            loaded.tokenizer,
            ids,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            desc,
            compute_dtype=loaded.hw.compute_dtype,
            synced=training.fsdp_active(cfg, loaded.hw),
        )


def baseline_prompts(cfg: Config, loaded: Loaded, train_split, dialogues: list) -> dict[str, list[list[int]]]:
    """The in-context prompts of each of `eval.baselines`, built before anything is scored: a baseline whose shots
    cannot fit the model's context stops the run before any generation, not after the base model was scored."""
    return {
        name: in_context_prompts(cfg, loaded.tokenizer, loaded.model, train_split, dialogues, name)
        for name in cfg.eval.baselines
    }


def checkpoint_folder(cfg: Config, run_dir: Path) -> Path:
    return Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else runtime.default_checkpoint_dir(run_dir)


def fine_tune(cfg: Config, loaded: Loaded, splits: dict, run_dir: Path, checkpoint_dir: Path):
    """Attach the adapters (or unfreeze the weights) and train, resuming from the newest complete checkpoint; rank 0
    saves the trained weights into the run folder. Returns the trained model and what training reports."""
    from transformers import set_seed

    from job import distributed, modeling, training
    from job.errors import Interrupted

    set_seed(cfg.train.seed)  # adapter initialisation must not depend on what ran before it
    model = modeling.add_adapters(loaded.model, cfg)
    try:
        trainer, result = training.train(
            model, loaded.tokenizer, splits, cfg, loaded.hw, run_dir, checkpoint_dir, loaded.attn
        )
    except training.Interrupted as e:
        distributed.cleanup()  # every rank stopped after the same step
        raise Interrupted(f"{e}; run the same command again (same output.run_name={run_dir.name}) to resume") from None
    model = trainer.model
    model.config.use_cache = True
    if cfg.method != "full":
        modeling.ready_for_generation(model, loaded.hw)
    # under FSDP each rank holds a shard (DTensor) of every weight: all ranks gather the whole state, rank 0 saves it
    state = trainer.accelerator.get_state_dict(model) if training.fsdp_active(cfg, loaded.hw) else None
    if runtime.is_main_process():
        modeling.save_trained(model, loaded.tokenizer, cfg, run_dir, state)
    return model, result


def score_summaries(cfg: Config, dialogues: list, summaries: Summaries) -> dict:
    """ROUGE with bootstrap intervals against every reference: the metrics.json blocks `base`, `finetuned` and
    `baselines`."""
    from job import scoring

    refs = [d.references for d in dialogues]

    def scored(out: Generated) -> dict:
        block = scoring.score(out.texts, refs, cfg.eval.bootstrap_samples, cfg.train.seed)
        block["hit_max_new_tokens"] = sum(out.hit_max_new_tokens)
        return block

    finetuned = scored(summaries.finetuned)
    base = scored(summaries.base) if summaries.base is not None else None
    baselines = {name: scored(out) for name, out in summaries.baselines.items()}
    return {"base": base, "finetuned": finetuned, "baselines": baselines}


def prediction_rows(dialogues: list, summaries: Summaries) -> list[dict]:
    """The rows of predictions.jsonl: each scored dialogue, its references and every model's summary."""
    base = summaries.base
    return [
        {
            "id": d.id,
            "dialogue": d.dialogue,
            "references": d.references,
            "base": base.texts[i] if base else None,
            "finetuned": summaries.finetuned.texts[i],
            **{name: out.texts[i] for name, out in summaries.baselines.items()},
        }
        for i, d in enumerate(dialogues)
    ]


def run_metrics(
    cfg: Config,
    run_dir: Path,
    started_at: str,
    t0: float,
    loaded: Loaded,
    result: TrainResult,
    dialogues: list,
    summaries: Summaries,
    scores: dict,
) -> dict:
    """metrics.json: the run, the scorer, the generation settings, the scores and the training figures."""
    from job import modeling, prompts, rundir, scoring

    seed, samples = cfg.train.seed, cfg.eval.bootstrap_samples
    tuned = summaries.finetuned
    scored = {"base": summaries.base, "finetuned": tuned, **summaries.baselines}
    halved = {name: out.halved_to for name, out in scored.items() if out is not None and out.halved_to}
    trainable, total = modeling.parameter_counts(loaded.model)
    finished_at = rundir.now()
    return {
        "run": {
            "name": run_dir.name,
            "method": cfg.method,
            "model": cfg.model.name,
            "dataset": cfg.data.dataset,
            "started_at": started_at,
            "finished_at": finished_at,
            "seconds": round(time.perf_counter() - t0, 2),
            "platform": runtime.platform(),
            "device": loaded.hw.name,
            "load_in_4bit": cfg.quantized,
            "processes": runtime.world_size(),
            "resumed_from": result.resumed_from,
        },
        "scorer": scoring.scorer_info(len(dialogues), sum(len(d.references) for d in dialogues), samples, seed),
        "generation": {
            "max_new_tokens": cfg.eval.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "batch_size": cfg.eval.batch_size,  # batches formed over all dialogues, whatever the processes
            **({"halved_after_oom": halved} if halved else {}),
            "dtype": modeling.dtype_name(loaded.hw.compute_dtype),
            "prompt_sha256": prompts.prompt_sha256(loaded.tokenizer, cfg.data),
            "summaries_per_second": round(len(dialogues) / tuned.seconds, 3) if tuned.seconds else None,
        },
        "base": scores["base"],
        "finetuned": scores["finetuned"],
        "baselines": scores["baselines"],
        "train": {
            "loss": result.loss,
            "eval_loss": result.eval_loss,
            "steps": result.steps,
            "epochs": result.epochs,
            "trainable_params": trainable,
            "total_params": total,
            "tokens_per_second": round(result.tokens_per_second, 2),
            "padding_fraction": round(result.padding_fraction, 4),
            "peak_memory_mb": round(result.peak_memory_mb, 1),
            "seconds": round(result.seconds, 2),
            "truncated_examples": result.truncated_examples,
        },
    }


def finish_run_folder(cfg: Config, run_dir: Path, checkpoint_dir: Path) -> None:
    """Merged weights where output.merge asks for them; the checkpoints dropped unless train.keep_checkpoints."""
    from job import training

    if cfg.output.merge:
        from job import merge

        merge.merge_run(run_dir, cfg, merge.merged_dir(run_dir))
    if not cfg.train.keep_checkpoints:
        training.remove_checkpoints(checkpoint_dir, run_dir)


def publish_run(cfg: Config, run_dir: Path) -> None:
    """Deliver the complete run folder to an s3:// or hf:// output.uri (a local one is already in place)."""

    if cfg.output.location.remote:
        from job import publish

        where = publish.deliver(run_dir, cfg)
        log.info("published to %s", where)


def in_context_prompts(cfg: Config, tokenizer, model, train_split, dialogues, name: str) -> list[list[int]]:
    """Prompts of an in-context baseline: the same shots (drawn with a fixed seed from the train split, never from
    the scored split) before every dialogue, checked against the model's context length."""
    import random

    from job import prompts
    from job.errors import ConfigInputError

    k = 1 if name == "one_shot" else cfg.eval.few_shot_examples
    if k > len(train_split):
        raise ConfigInputError(f"eval.baselines {name} needs {k} shots but the train split has {len(train_split)} rows")
    scored = {d.dialogue for d in dialogues}
    pool = [i for i in range(len(train_split)) if train_split[i]["dialogue"] not in scored]
    picks = random.Random(cfg.train.seed).sample(pool, k)
    shots = tuple((train_split[i]["dialogue"], train_split[i]["summary"]) for i in picks)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    budget = prompts.prompt_budget(
        cfg.data, enc_dec, shots=True, context=context, max_new_tokens=cfg.eval.max_new_tokens
    )
    try:
        return [prompts.prompt_ids_for_generation(tokenizer, cfg.data, d.dialogue, budget, shots) for d in dialogues]
    except ValueError:
        room = (
            f"{context} tokens" if enc_dec else f"{context} tokens minus eval.max_new_tokens={cfg.eval.max_new_tokens}"
        )
        raise ConfigInputError(
            f"eval.baselines {name}: {k} shots alone exceed the model's context of {room}; use one_shot, fewer "
            f"eval.few_shot_examples or a model with a longer context"
        ) from None


def _extra_split(cfg: Config):
    from job import data

    sub = type(cfg.data)(**{**cfg.data.__dict__, "test_split": cfg.eval.split, "eval_split": ""})
    return data.load_splits(sub, cfg.train.seed)["test"]


def _write_results(run_dir: Path, cfg: Config, metrics: dict, predictions: list[dict], history: list[dict]) -> None:
    from job import faults, report, rundir

    faults.inject("write_results", run_dir=run_dir)
    with open(run_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    report.plot_loss(history, run_dir / "loss.png")
    report.write_report(run_dir / "report.md", metrics, predictions, cfg.eval.report_samples)
    rundir.write_json(run_dir / "metrics.json", metrics)


def _print_final_metrics(metrics: dict, cfg: Config) -> None:
    """`base_*`/`finetuned_*` ROUGE; a run scored on a split other than the test split (a tuning trial's
    objective) also prints the fine-tuned scores named with that split: `metrics: validation_rougeL=...`."""
    from job import logs
    from job.scoring import METRICS

    values = {}
    for key in ("base", "finetuned"):
        if metrics.get(key):
            values.update({f"{key}_{m}": round(metrics[key][m], 6) for m in METRICS})
    logs.emit_metrics(values)
    split = cfg.scored_split
    if split != cfg.data.test_split:
        logs.emit_metrics({f"{split}_{m}": round(metrics["finetuned"][m], 6) for m in METRICS})
