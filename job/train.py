"""`python -m job train`: resolve config -> load data -> load model -> score the base -> train -> score the
fine-tuned model -> write the run folder (manifest last) -> publish."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from job import cli, runtime
from job.config import Config

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
    run_dir = run(cfg)
    if run_dir is not None:
        print(run_dir, flush=True)
    return 0


def run(cfg: Config) -> Path | None:
    """The whole job; returns the run folder (None on the helper ranks of a torchrun job)."""
    from transformers import set_seed

    from job import (
        data,
        distributed,
        faults,
        generation,
        modeling,
        preflight,
        prompts,
        rundir,
        scoring,
        secrets,
        training,
    )
    from job.errors import Interrupted

    started_at, t0 = rundir.now(), time.perf_counter()
    distributed.setup()
    main_rank = runtime.is_main_process()
    if cfg.output.run_name is None:
        cfg.output.run_name = distributed.broadcast(runtime.default_run_name(cfg.hash()))
    run_dir = rundir.run_path(cfg)

    token = secrets.resolve_hf_token()
    if main_rank:  # one probe write, one Hub check: the other ranks follow rank 0 or are stopped with it
        preflight.check(cfg, token)
    hw = modeling.detect_hardware(cfg.model.compute_dtype)

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

    if main_rank:
        run_dir = rundir.prepare(cfg)
        log.info("run folder: %s", run_dir)
        (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        modeling.resolve_model_path(cfg, run_dir)  # a built-in model is written once, by rank 0
    distributed.barrier()

    faults.inject("load_model", cfg=cfg)
    path = modeling.resolve_model_path(cfg, run_dir)
    enc_dec = modeling.is_encoder_decoder(path, cfg)
    hw = modeling.for_architecture(hw, enc_dec)
    tokenizer = modeling.load_tokenizer(path, cfg)
    model = modeling.load_base_model(cfg, path, hw)
    attn = modeling.attention_implementation(cfg, hw)
    max_prompt = prompts.generation_prompt_budget(cfg.data, enc_dec)
    fitted = [prompts.fit_prompt(tokenizer, cfg.data, d.dialogue, max_prompt) for d in dialogues]
    prompt_ids = [ids for ids, _ in fitted]
    if cut := sum(truncated for _, truncated in fitted):
        log.warning(
            "generation: %d of %d scored prompts were longer than %d tokens; their dialogues were cut",
            cut,
            len(fitted),
            max_prompt,
        )

    def summarize(desc: str, ids: list[list[int]] = prompt_ids) -> generation.Generated:
        return generation.generate_across_ranks(
            model, tokenizer, ids, cfg.eval.max_new_tokens, cfg.eval.batch_size, desc
        )

    base = summarize("base model summaries") if cfg.eval.base else None
    baselines = {
        name: summarize(f"{name} baseline", in_context_prompts(cfg, tokenizer, model, splits["train"], dialogues, name))
        for name in cfg.eval.baselines
    }

    set_seed(cfg.train.seed)  # adapter initialisation must not depend on what ran before it
    model = modeling.add_adapters(model, cfg)
    checkpoint_dir = (
        Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else runtime.default_checkpoint_dir(run_dir)
    )
    try:
        trainer, result = training.train(model, tokenizer, splits, cfg, hw, run_dir, checkpoint_dir, attn)
    except training.Interrupted as e:
        distributed.cleanup()  # every rank stopped after the same step
        raise Interrupted(f"{e}; run the same command again (same output.run_name={run_dir.name}) to resume") from None
    model = trainer.model
    model.config.use_cache = True
    if main_rank:
        modeling.save_trained(model, tokenizer, cfg, run_dir)
    tuned = summarize("fine-tuned summaries")
    if not main_rank:  # rank 0 scores, writes and publishes alone; the others wait for it in cleanup()
        distributed.cleanup()
        return None
    refs = [d.references for d in dialogues]
    seed, samples = cfg.train.seed, cfg.eval.bootstrap_samples
    scores = {"finetuned": scoring.score(tuned.texts, refs, samples, seed)}
    scores["finetuned"]["hit_max_new_tokens"] = sum(tuned.hit_max_new_tokens)
    if base is not None:
        scores["base"] = scoring.score(base.texts, refs, samples, seed)
        scores["base"]["hit_max_new_tokens"] = sum(base.hit_max_new_tokens)
    scored_baselines = {}
    for name, out in baselines.items():
        scored_baselines[name] = scoring.score(out.texts, refs, samples, seed)
        scored_baselines[name]["hit_max_new_tokens"] = sum(out.hit_max_new_tokens)

    predictions = [
        {
            "id": d.id,
            "dialogue": d.dialogue,
            "references": d.references,
            "base": base.texts[i] if base else None,
            "finetuned": tuned.texts[i],
            **{name: out.texts[i] for name, out in baselines.items()},
        }
        for i, d in enumerate(dialogues)
    ]
    trainable, total = modeling.parameter_counts(model)
    finished_at = rundir.now()
    metrics = {
        "run": {
            "name": run_dir.name,
            "method": cfg.method,
            "model": cfg.model.name,
            "dataset": cfg.data.dataset,
            "started_at": started_at,
            "finished_at": finished_at,
            "seconds": round(time.perf_counter() - t0, 2),
            "platform": runtime.platform(),
            "device": hw.name,
            "load_in_4bit": cfg.quantized,
            "processes": runtime.world_size(),
            "resumed_from": result.resumed_from,
        },
        "scorer": scoring.scorer_info(len(dialogues), sum(len(r) for r in refs), samples, seed),
        "generation": {
            "max_new_tokens": cfg.eval.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "batch_size": tuned.batch_size,
            "dtype": modeling.dtype_name(hw.compute_dtype),
            "prompt_sha256": prompts.prompt_sha256(tokenizer, cfg.data),
            "summaries_per_second": round(len(dialogues) / tuned.seconds, 3) if tuned.seconds else None,
        },
        "base": scores.get("base"),
        "finetuned": scores["finetuned"],
        "baselines": scored_baselines,
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
    faults.inject("write_results", run_dir=run_dir)
    _write_results(run_dir, cfg, metrics, predictions, result.history)
    if cfg.output.merge:
        from job import merge

        merge.merge_run(run_dir, cfg, merge.merged_dir(run_dir))
    if not cfg.train.keep_checkpoints:
        training.remove_checkpoints(checkpoint_dir, run_dir)
    _print_final_metrics(metrics)
    rundir.write_manifest(run_dir, cfg, started_at)
    log.info("run complete: %s", run_dir)
    if rundir.is_remote(cfg.output.uri):
        from job import publish

        where = publish.deliver(run_dir, cfg)
        log.info("published to %s", where)
    distributed.cleanup()
    return run_dir


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
    budget = (context - cfg.eval.max_new_tokens) if context else 10**9
    try:
        return [prompts.prompt_ids_for_generation(tokenizer, cfg.data, d.dialogue, budget, shots) for d in dialogues]
    except ValueError:
        raise ConfigInputError(
            f"eval.baselines {name}: {k} shots alone exceed the model's context of {context} tokens minus "
            f"eval.max_new_tokens={cfg.eval.max_new_tokens}; use one_shot, fewer eval.few_shot_examples or a "
            f"model with a longer context"
        ) from None


def _extra_split(cfg: Config):
    from job import data

    sub = type(cfg.data)(**{**cfg.data.__dict__, "test_split": cfg.eval.split, "eval_split": ""})
    return data.load_splits(sub, cfg.train.seed)["test"]


def _write_results(run_dir: Path, cfg: Config, metrics: dict, predictions: list[dict], history: list[dict]) -> None:
    from job import report, rundir

    with open(run_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    report.plot_loss(history, run_dir / "loss.png")
    report.write_report(run_dir / "report.md", metrics, predictions, cfg.eval.report_samples)
    rundir.write_json(run_dir / "metrics.json", metrics)


def _print_final_metrics(metrics: dict) -> None:
    from job import logs
    from job.scoring import METRICS

    values = {}
    for key in ("base", "finetuned"):
        if metrics.get(key):
            values.update({f"{key}_{m}": round(metrics[key][m], 6) for m in METRICS})
    logs.emit_metrics(values)
