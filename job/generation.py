"""Batched greedy generation: sorted by length, left padding, KV cache, a batch size that halves on out-of-memory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from job import faults, watchdog

log = logging.getLogger(__name__)


@dataclass
class Generated:
    texts: list[str]
    hit_max_new_tokens: list[bool]
    batch_size: int  # the configured batch size the summaries were formed with
    seconds: float
    halved_to: int | None = None  # the batch size after out-of-memory halvings (None: none happened)
    new_tokens: list[int] = field(default_factory=list)  # tokens generated per summary, before its stop token


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of prompt indices formed over all the prompts, longest first (an OOM shows up early, and similar
    lengths pad little): the same batches whatever the number of ranks, since a batched greedy summary can depend
    on its batch (bitsandbytes picks its kernel by batch size, padding moves the numerics)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


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


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc: str = "generating",
    show_progress: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> Generated:
    """Greedy summaries for prompts given as token ids, in the prompts' order (one process)."""
    return generate_batches(
        model, tokenizer, prompts, plan_batches([len(p) for p in prompts], batch_size), max_new_tokens, batch_size,
        desc, show_progress, compute_dtype,
    )  # fmt: skip


def generate_batches(
    model,
    tokenizer,
    prompts: list[list[int]],
    batches: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc: str = "generating",
    show_progress: bool = True,
    compute_dtype: torch.dtype | None = None,
    synced: bool = False,
) -> Generated:
    """Greedy summaries of the given batches of prompt indices; texts for the other prompts stay empty.

    No `inference_mode`: FSDP2 cannot unshard parameters inside it; `no_grad` saves the same memory. `synced` (FSDP):
    every rank keeps stepping until all ranks are done (`synced_gpus`), and `batches` must have the same length on
    every rank. A batch that runs out of memory is split in halves, and so is every batch after it; the smaller
    size is logged and returned as `halved_to`. `compute_dtype`: weights kept in fp32 (method=full's master
    weights) generate under autocast in that dtype, as they trained."""
    import contextlib
    import time

    was_training = model.training
    model.eval()
    config = greedy_config(model, tokenizer, max_new_tokens)
    device = next(p for p in model.parameters()).device
    texts: list[str | None] = [None] * len(prompts)
    hit = [False] * len(prompts)
    counts = [0] * len(prompts)
    size, halved_to = batch_size, None
    autocast = _autocast(model, device, compute_dtype)
    start = time.perf_counter()
    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="dialogue", dynamic_ncols=True,
               disable=not show_progress)  # fmt: skip
    pending = [list(b) for b in batches]
    with torch.no_grad(), autocast if autocast is not None else contextlib.nullcontext():
        while pending:
            batch = pending.pop(0)
            if len(batch) > size:  # after a halving: this batch in pieces of the smaller size
                pending[:0] = [batch[k : k + size] for k in range(0, len(batch), size)]
                continue
            try:
                faults.inject("generate_batch", step=len(batch))
                out = _generate_batch(model, tokenizer, [prompts[j] for j in batch], config, device, synced)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                size = halved_to = max(1, min(size, len(batch)) // 2)
                torch.cuda.empty_cache()
                log.warning("out of GPU memory while generating: eval batch size halved to %d", size)
                pending.insert(0, batch)
                continue
            for j, (text, reached, n) in zip(batch, out):
                texts[j], hit[j], counts[j] = text, reached, n
            bar.update(len(batch))
            watchdog.beat(f"{desc}: {bar.n} of {bar.total} dialogues")
    bar.close()
    if was_training:
        model.train()
    return Generated(
        texts=[t or "" for t in texts],
        hit_max_new_tokens=hit,
        batch_size=batch_size,
        seconds=time.perf_counter() - start,
        halved_to=halved_to,
        new_tokens=counts,
    )


def _autocast(model, device, compute_dtype: torch.dtype | None):
    """Autocast to the compute dtype where the weights are fp32 but the compute is not (method=full on a GPU)."""
    if compute_dtype is None or compute_dtype == torch.float32:
        return None
    if model.get_input_embeddings().weight.dtype != torch.float32:
        return None
    return torch.autocast(device.type, dtype=compute_dtype)


def _generate_batch(
    model, tokenizer, batch: list[list[int]], config, device, synced=False
) -> list[tuple[str, bool, int]]:
    width = max(len(p) for p in batch)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config, synced_gpus=synced)
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
        results.append((text, not ended and len(row) >= config.max_new_tokens, len(row)))
    return results


def generate_across_ranks(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc: str = "generating",
    compute_dtype: torch.dtype | None = None,
    synced: bool = False,
) -> Generated:
    """`generate` with the batches (formed over all the prompts, see `plan_batches`) dealt round-robin to the
    torchrun ranks and the summaries gathered back in order: the same batches, so the same summaries, for any
    number of ranks. `synced` (FSDP, where every forward pass is collective): every rank runs as many batches,
    a rank short of one repeats its last and drops the result."""
    from job import distributed, runtime

    batches = plan_batches([len(p) for p in prompts], batch_size)
    world, rank = (runtime.world_size(), runtime.rank()) if distributed.enabled() else (1, 0)
    mine = batches[rank::world]
    extra = []
    if synced and world > 1:
        rounds = -(-len(batches) // world)
        extra = [mine[-1] if mine else batches[0]] * (rounds - len(mine))
    local = generate_batches(
        model, tokenizer, prompts, mine + extra, max_new_tokens, batch_size, desc,
        show_progress=runtime.is_main_process(), compute_dtype=compute_dtype, synced=synced,
    )  # fmt: skip
    done = {i for b in mine for i in b}
    mine_out = {i: (local.texts[i], local.hit_max_new_tokens[i], local.new_tokens[i]) for i in done}
    merged = distributed.gather_in_order(len(prompts), mine_out)
    halved = distributed.max_all(-(local.halved_to or batch_size + 1))  # the smallest size any rank fell to
    return Generated(
        texts=[t for t, _, _ in merged],
        hit_max_new_tokens=[h for _, h, _ in merged],
        batch_size=batch_size,
        seconds=distributed.max_all(local.seconds),
        halved_to=None if -halved > batch_size else int(-halved),
        new_tokens=[n for _, _, n in merged],
    )
