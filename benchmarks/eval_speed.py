"""Evaluation throughput: the job's batched greedy generation against unsorted batches and one summary at a time.

All arms summarize the same DialogSum-like dialogues with the same 4-bit model, the same prompts (built by the
job's `prompt_ids_for_generation`), the same greedy settings and the same max_new_tokens. The job's arm is
`job.generation.generate` (sorted by length, left-padded batches, KV cache); the peer's arm is the same batches in the
dialogues' own order, unsorted (LLaMA-Factory's batch predict: the Trainer's sequential loader over left-padded
prompts), through the job's `generate_batches`; the notebooks' loop is one `model.generate` call per dialogue. In fp32
the summaries must be identical across the arms, and the benchmark checks that they are.
"""

from __future__ import annotations

import logging
import time

import torch

from benchmarks import common

log = logging.getLogger(__name__)


def prompts(cfg, tokenizer, model, n: int) -> list[list[int]]:
    """Prompt ids as the job's evaluation builds them (the dialogue cut to the job's prompt budget)."""
    from job.prompts import prompt_budget, prompt_ids_for_generation

    max_prompt = prompt_budget(cfg.data, model.config.is_encoder_decoder)
    return [prompt_ids_for_generation(tokenizer, cfg.data, e.dialogue, max_prompt) for e in common.rows(n)]


@torch.inference_mode()
def one_at_a_time(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[str]:
    """The notebooks' loop: one unpadded `generate` call per dialogue."""
    from job.generation import greedy_config

    config = greedy_config(model, tokenizer, max_new_tokens)
    stops = set(config.eos_token_id)
    device = next(model.parameters()).device
    texts = []
    for ids in prompt_ids:
        input_ids = torch.tensor([ids], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        new = out[0, len(ids) :].tolist()
        end = next((k for k, t in enumerate(new) if t in stops), len(new))
        texts.append(tokenizer.decode(new[:end], skip_special_tokens=True).strip())
    return texts


def batched(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int):
    from job.generation import generate

    return generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, desc="batched (benchmark)")


def unsorted_batched(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int):
    """The same batch size over the dialogues in their own order: each batch pads to its longest prompt and runs
    until its longest summary ends."""
    from job.generation import generate_batches

    order = [list(range(k, min(k + batch_size, len(prompt_ids)))) for k in range(0, len(prompt_ids), batch_size)]
    return generate_batches(
        model, tokenizer, prompt_ids, order, max_new_tokens, batch_size, desc="unsorted batches (benchmark)"
    )


def check_identical(name: str, texts: list[str], single_texts: list[str]) -> int:
    """fp32: a batched summary must be the one-at-a-time summary, word for word; returns how many differ (none)."""
    differing = [i for i, (a, b) in enumerate(zip(texts, single_texts, strict=True)) if a != b]
    if differing:
        i = differing[0]
        raise AssertionError(
            f"{len(differing)} of {len(texts)} {name} summaries differ from one-at-a-time ones in fp32; first, "
            f"dialogue {i}: {texts[i]!r} vs {single_texts[i]!r}"
        )
    return len(differing)


ARMS = ("batched", "unsorted_batched", "one_at_a_time")


def run(size: common.Size) -> dict:
    cfg, hw = common.config(), common.hardware()
    tokenizer = common.load_tokenizer(cfg)
    model = common.load_model(cfg, hw, lora=False)
    model.eval()
    prompt_ids = prompts(cfg, tokenizer, model, size.eval_dialogues)
    n = len(prompt_ids)
    batched(model, tokenizer, prompt_ids[:2], 2, 2)  # first-call allocations stay out of the timing
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    texts: dict[str, list[str]] = {}
    for repeat in range(size.repeats):
        order = list(ARMS)[repeat % len(ARMS) :] + list(ARMS)[: repeat % len(ARMS)]  # rotate which arm goes first
        for arm in order:
            start = time.perf_counter()
            if arm == "batched":
                out = batched(model, tokenizer, prompt_ids, size.max_new_tokens, size.eval_batch_size)
                texts[arm], hit = out.texts, out.hit_max_new_tokens
            elif arm == "unsorted_batched":
                texts[arm] = unsorted_batched(
                    model, tokenizer, prompt_ids, size.max_new_tokens, size.eval_batch_size
                ).texts
            else:
                texts[arm] = one_at_a_time(model, tokenizer, prompt_ids, size.max_new_tokens)
            seconds[arm].append(time.perf_counter() - start)
            log.info("eval repeat %d, %s: %.2f summaries/s", repeat + 1, arm, n / seconds[arm][-1])
    single_texts = texts["one_at_a_time"]
    differing = check_identical("batched", texts["batched"], single_texts)
    check_identical("unsorted batched", texts["unsorted_batched"], single_texts)
    batched_texts = texts["batched"]
    rate = {arm: [n / s for s in values] for arm, values in seconds.items()}
    half = half_precision(size)

    def paired(other: str) -> list[float]:
        return [b / s for b, s in zip(rate["batched"], rate[other], strict=True)]

    words = [len(t.split()) for t in batched_texts]
    return {
        "model": f"{cfg.model.name} (4-bit {cfg.model.quant_type}, no adapter)",
        "compute_dtype": "float32",
        "bitsandbytes_cpu_bf16_kernel": False,  # job.modeling.keep_cpu_4bit_in_compute_dtype
        "dialogues": n,
        "prompt_tokens_mean": round(sum(map(len, prompt_ids)) / n, 1),
        "max_new_tokens": size.max_new_tokens,
        "batch_size": size.eval_batch_size,
        "repeats": size.repeats,
        "summaries_hit_max_new_tokens": sum(hit),
        "summary_words_mean": round(sum(words) / n, 1),
        "identical_summaries": n - differing,
        "batched": _arm(rate["batched"], seconds["batched"]),
        "unsorted_batched": _arm(rate["unsorted_batched"], seconds["unsorted_batched"]),
        "one_at_a_time": _arm(rate["one_at_a_time"], seconds["one_at_a_time"]),
        "speedup_each": [round(r, 2) for r in paired("one_at_a_time")],
        # each repeat runs the arms back to back, so its ratio is the least disturbed by other load on the machine
        "eval_speedup": round(common.median(paired("one_at_a_time")), 2),
        "speedup_over_unsorted_batched": round(common.median(paired("unsorted_batched")), 2),
        "speedup_over_unsorted_batched_each": [round(r, 2) for r in paired("unsorted_batched")],
        "ratio_of_median_rates": round(common.median(rate["batched"]) / common.median(rate["one_at_a_time"]), 2),
        "half_precision_agreement": half,
    }


def half_precision(size: common.Size) -> dict:
    """How often batched and one-at-a-time greedy summaries agree when the compute dtype is bf16 or fp16: rounding
    differs with the batch's shape, and greedy decoding follows a different token wherever the top two are closer
    than that rounding. Measured, not asserted; the fp32 run above must agree exactly."""
    from job.modeling import detect_hardware

    n = max(2, size.eval_dialogues // 2)
    out = {}
    for dtype in ("bfloat16", "float16"):
        cfg = common.config([f"model.compute_dtype={dtype}"])
        tokenizer = common.load_tokenizer(cfg)
        model = common.load_model(cfg, detect_hardware(dtype), lora=False)
        model.eval()
        prompt_ids = prompts(cfg, tokenizer, model, n)
        batched_texts = batched(model, tokenizer, prompt_ids, size.max_new_tokens, size.eval_batch_size).texts
        single_texts = one_at_a_time(model, tokenizer, prompt_ids, size.max_new_tokens)
        first_diff = [_first_difference(a, b) for a, b in zip(batched_texts, single_texts, strict=True) if a != b]
        out[dtype] = {
            "dialogues": n,
            "identical_summaries": n - len(first_diff),
            "first_differing_word": first_diff,
        }
        log.info("eval %s: %d of %d summaries identical", dtype, n - len(first_diff), n)
    return out


def _first_difference(a: str, b: str) -> int:
    wa, wb = a.split(), b.split()
    return next((i for i, (x, y) in enumerate(zip(wa, wb)) if x != y), min(len(wa), len(wb)))


def _arm(rates: list[float], seconds: list[float]) -> dict:
    return {
        "summaries_per_second": round(common.median(rates), 3),
        "summaries_per_second_each": [round(r, 3) for r in rates],
        "seconds_each": [round(s, 2) for s in seconds],
    }
