"""Batched greedy generation: sorted by length, left padding, KV cache, a batch size that halves on out-of-memory."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class Generated:
    texts: list[str]
    hit_max_new_tokens: list[bool]
    batch_size: int
    seconds: float


def stop_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config lists (Llama-3.x ends turns with <|eot_id|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return sorted(i for i in ids if i is not None)


def greedy_config(model, tokenizer, max_new_tokens: int):
    """Explicitly greedy: some models' generation configs sample (Llama-3.2-Instruct ships temperature 0.6)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc: str = "generating",
    show_progress: bool = True,
) -> Generated:
    """Greedy summaries for prompts given as token ids, in the prompts' order."""
    import time

    was_training = model.training
    model.eval()
    config = greedy_config(model, tokenizer, max_new_tokens)
    device = next(p for p in model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: an OOM shows up early
    texts: list[str | None] = [None] * len(prompts)
    hit = [False] * len(prompts)
    start = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="dialogue", dynamic_ncols=True, disable=not show_progress)
    i = 0
    while i < len(order):
        idx = order[i : i + batch_size]
        try:
            out = _generate_batch(model, tokenizer, [prompts[j] for j in idx], config, device)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            torch.cuda.empty_cache()
            log.warning("out of GPU memory while generating: eval batch size halved to %d", batch_size)
            continue
        for j, (text, reached) in zip(idx, out):
            texts[j], hit[j] = text, reached
        bar.update(len(idx))
        i += len(idx)
    bar.close()
    if was_training:
        model.train()
    return Generated(
        texts=[t or "" for t in texts],
        hit_max_new_tokens=hit,
        batch_size=batch_size,
        seconds=time.perf_counter() - start,
    )


def _generate_batch(model, tokenizer, batch: list[list[int]], config, device) -> list[tuple[str, bool]]:
    width = max(len(p) for p in batch)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
    # decoder-only models return the prompt too; encoder-decoders return the decoder start token, then new tokens
    new = out[:, 1:] if model.config.is_encoder_decoder else out[:, width:]
    results = []
    stops = set(config.eos_token_id)
    for row in new.tolist():
        end = next((k for k, t in enumerate(row) if t in stops), None)
        ended = end is not None
        if ended:
            row = row[:end]
        text = tokenizer.decode(row, skip_special_tokens=True).strip()
        results.append((text, not ended and len(row) >= config.max_new_tokens))
    return results


def generate_across_ranks(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, desc: str = "generating"
) -> Generated:
    """`generate` with the prompts split across torchrun ranks and gathered back in order (one process: the same)."""
    from job import distributed, runtime

    mine = distributed.shard(len(prompts))
    local = generate(
        model,
        tokenizer,
        [prompts[i] for i in mine],
        max_new_tokens,
        batch_size,
        desc,
        show_progress=runtime.is_main_process(),
    )
    merged = distributed.gather_in_order(
        len(prompts), {i: (t, h) for i, t, h in zip(mine, local.texts, local.hit_max_new_tokens)}
    )
    return Generated(
        texts=[t for t, _ in merged],
        hit_max_new_tokens=[h for _, h in merged],
        batch_size=local.batch_size,
        seconds=distributed.max_all(local.seconds),
    )
