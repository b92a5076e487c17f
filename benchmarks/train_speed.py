"""Training throughput: the job's padding-free packing against the peers' ways of batching the same examples.

The arms: the job's padding-free packing; padding to the longest example of each batch (TRL's default collator,
the strongest peer's default); group-by-length (the same dynamic padding over batches of similar lengths, as the
Trainer's `train_sampling_strategy="group_by_length"` forms them, and the job's fallback); and padding every example
to a fixed maximum length (the notebooks'). All arms train the same 4-bit model with the same LoRA adapter, on the
same DialogSum-like examples in the same batches (group-by-length regroups the same timed examples), with the same
loss masking (prompt and padding labels -100), for the same number of optimizer steps. Only the batch layout
differs: the job's collator (`job.training.make_collator("padding_free")`) concatenates a batch's examples into one
row with position ids restarting per example; the padded arms pad on the right and mask padding in attention and
labels. Throughput counts non-padding tokens only.

Because the examples, masking and weights are the same, the arms must see the same loss at every step (to float
error): the benchmark checks that (group-by-length against padding-free on the same grouped batches, run once), so
a collator that dropped or leaked tokens would fail here instead of looking fast.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks import common
from job.training import CountingCollator

log = logging.getLogger(__name__)

LOSS_TOLERANCE = 1e-3  # fp32 compute; packed and padded sums run in different orders


class FixedPaddingCollator:
    """The notebooks' batches: every example right-padded to max_length, padding masked in attention and labels."""

    def __init__(self, pad_id: int, max_length: int):
        self.pad_id = pad_id
        self.max_length = max_length

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask, labels = [], [], []
        for f in features:
            pad = self.max_length - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
            labels.append(list(f["labels"]) + [-100] * pad)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def per_batch_padding_collator(tokenizer) -> tuple[object, str]:
    """TRL's default SFT collator where TRL is installed (right padding to the longest example of the batch, labels
    -100 on the prompt and the padding); otherwise transformers' DataCollatorForSeq2Seq, which pads the same way."""
    try:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    except ImportError:
        from transformers import DataCollatorForSeq2Seq

        inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
        return inner, "transformers.DataCollatorForSeq2Seq(padding=True) (TRL not installed; it pads the same way)"
    trl_collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, completion_only_loss=True)

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        batch = trl_collator(
            [{"input_ids": f["input_ids"], "completion_mask": [int(t != -100) for t in f["labels"]]} for f in features]
        )
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    return collate, "trl.trainer.sft_trainer.DataCollatorForLanguageModeling(completion_only_loss=True)"


def grouped_by_length(batch_list: list[list[dict]], size: int) -> list[list[dict]]:
    """The same warm-up batch, then the timed examples regrouped as the Trainer's length-grouped sampler groups them
    (`get_length_grouped_indices`: shuffled megabatches, each sorted by length, the longest batch first)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    timed = [f for b in batch_list[1:] for f in b]
    order = get_length_grouped_indices(
        [len(f["input_ids"]) for f in timed], size, generator=torch.Generator().manual_seed(0)
    )
    flat = [timed[i] for i in order]
    return [batch_list[0]] + [flat[i : i + size] for i in range(0, len(flat), size)]


@dataclass
class Arm:
    name: str
    tokens_per_second: float
    real_tokens: int
    fed_tokens: int
    label_tokens: int
    seconds: float
    padding_fraction: float
    losses: list[float]


def tokenized(cfg, tokenizer, n: int) -> list[dict]:
    """The examples as the job tokenizes them for training (summary-only labels, over-long dialogues cut)."""
    from datasets import Dataset

    from job.training import tokenize

    ds = Dataset.from_list([e.row() for e in common.rows(n)])
    out, _ = tokenize(ds, tokenizer, cfg, "tokenizing benchmark examples")
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in out]


def batches(features: list[dict], size: int, steps: int) -> list[list[dict]]:
    """steps + 1 batches (the first one warms up), cycling through the examples in a fixed shuffled order."""
    order = list(range(len(features)))
    random.Random(0).shuffle(order)
    flat = [features[order[i % len(order)]] for i in range((steps + 1) * size)]
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def run_arm(name: str, make_collator: Callable[[], CountingCollator], batch_list: list[list[dict]], cfg, hw) -> Arm:
    """A fresh model and optimizer, one untimed warm-up step, then the timed steps."""
    torch.manual_seed(cfg.train.seed)  # the same LoRA initialisation in every arm
    model = common.load_model(cfg, hw, lora=True)
    model.config.use_cache = False  # as the job trains: packed examples are only kept apart without a cache
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    device = next(model.parameters()).device

    def step(batch: dict[str, torch.Tensor]) -> float:
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step(make_collator()(batch_list[0]))  # first-call allocations stay out of the timing
    collator = make_collator()
    losses = []
    start = time.perf_counter()
    for batch in batch_list[1:]:
        losses.append(step(collator(batch)))  # collation is timed too: the Trainer collates in the same process
    seconds = time.perf_counter() - start
    return Arm(
        name=name,
        tokens_per_second=collator.real / seconds,
        real_tokens=collator.real,
        fed_tokens=collator.total,
        label_tokens=sum(sum(1 for t in f["labels"] if t != -100) for b in batch_list[1:] for f in b),
        seconds=seconds,
        padding_fraction=1 - collator.real / collator.total,
        losses=losses,
    )


def check_same_losses(packed: Arm, padded: Arm) -> float:
    """Same examples, masking and weights: the per-step losses must agree, or the comparison is not like for like."""
    worst = max(abs(a - b) / max(abs(b), 1e-8) for a, b in zip(packed.losses, padded.losses, strict=True))
    if worst > LOSS_TOLERANCE:
        raise AssertionError(
            f"{packed.name} and {padded.name} losses differ by {worst:.2e} (relative) at the same step: "
            f"{packed.losses} vs {padded.losses}"
        )
    return worst


PEERS = ("per_batch_padding", "group_by_length", "fixed_padding")
"""The arms padding-free is compared with, each ratio `speedup_over_<arm>` (fixed padding's is `train_speedup`)."""


def run(size: common.Size) -> dict:
    from job.training import CountingCollator, make_collator

    cfg, hw = common.config(), common.hardware()
    tokenizer = common.load_tokenizer(cfg)
    features = tokenized(cfg, tokenizer, size.train_examples)
    batch_list = batches(features, size.batch_size, size.train_steps)
    grouped = grouped_by_length(batch_list, size.batch_size)
    pad_id = tokenizer.pad_token_id
    per_batch, per_batch_name = per_batch_padding_collator(tokenizer)
    arms: dict[str, tuple[Callable[[], CountingCollator], list[list[dict]]]] = {
        "padding_free": (lambda: make_collator("padding_free", tokenizer), batch_list),
        "per_batch_padding": (lambda: CountingCollator(per_batch, pad_id), batch_list),
        "group_by_length": (lambda: make_collator("group_by_length", tokenizer), grouped),
        "fixed_padding": (
            lambda: CountingCollator(FixedPaddingCollator(pad_id, cfg.data.max_length), pad_id),
            batch_list,
        ),
    }
    results: dict[str, list[Arm]] = {name: [] for name in arms}
    for repeat in range(size.repeats):
        names = list(arms)[repeat % len(arms) :] + list(arms)[: repeat % len(arms)]  # rotate which arm goes first
        for name in names:
            arm = run_arm(name, *arms[name], cfg, hw)
            log.info("train repeat %d, %s: %.0f non-padding tokens/s", repeat + 1, name, arm.tokens_per_second)
            results[name].append(arm)
    # group-by-length trains other batches: its losses are checked against padding-free on those same batches
    reference = run_arm("padding_free on the grouped batches", arms["padding_free"][0], grouped, cfg, hw)
    worst = max(
        [check_same_losses(p, other) for name in PEERS if name != "group_by_length"
         for p, other in zip(results["padding_free"], results[name], strict=True)]
        + [check_same_losses(reference, g) for g in results["group_by_length"]]
    )  # fmt: skip
    return summarize(results, cfg, size, features, worst, per_batch_name)


def summarize(
    results: dict[str, list[Arm]], cfg, size: common.Size, features: list[dict], loss_diff: float, per_batch: str
) -> dict:
    packed, padded = results["padding_free"], results["fixed_padding"]

    def paired(name: str) -> list[float]:
        return [p.tokens_per_second / o.tokens_per_second for p, o in zip(packed, results[name], strict=True)]

    per_repeat = paired("fixed_padding")
    lengths = sorted(len(f["input_ids"]) for f in features)

    def arm_record(arms: list[Arm]) -> dict:
        first = arms[0]
        return {
            "tokens_per_second": round(common.median([a.tokens_per_second for a in arms]), 1),
            "tokens_per_second_each": [round(a.tokens_per_second, 1) for a in arms],
            "seconds_each": [round(a.seconds, 3) for a in arms],
            "non_padding_tokens": first.real_tokens,
            "tokens_fed": first.fed_tokens,
            "label_tokens": first.label_tokens,
            "padding_fraction": round(first.padding_fraction, 4),
            "losses": [round(x, 5) for x in first.losses],
        }

    return {
        "model": f"{cfg.model.name} (4-bit {cfg.model.quant_type}, LoRA r={cfg.lora.r} on {cfg.lora.target_modules})",
        "compute_dtype": "float32",
        "optimizer": "torch AdamW",
        "gradient_checkpointing": False,
        "batch_size": size.batch_size,
        "optimizer_steps": size.train_steps,
        "repeats": size.repeats,
        "max_length": cfg.data.max_length,
        "example_tokens": {
            "mean": round(sum(lengths) / len(lengths), 1),
            "median": lengths[len(lengths) // 2],
            "max": lengths[-1],
        },
        "padding_free": arm_record(packed),
        "per_batch_padding": {"collator": per_batch, **arm_record(results["per_batch_padding"])},
        "group_by_length": {
            "batches": "transformers' get_length_grouped_indices over the timed examples",
            **arm_record(results["group_by_length"]),
        },
        "fixed_padding": arm_record(padded),
        "max_relative_loss_difference": float(f"{loss_diff:.2e}"),
        **{f"speedup_over_{name}": round(common.median(paired(name)), 2) for name in PEERS if name != "fixed_padding"},
        "speedup_over_each": {name: [round(r, 2) for r in paired(name)] for name in PEERS if name != "fixed_padding"},
        "speedup_each": [round(r, 2) for r in per_repeat],
        # each repeat runs both arms back to back, so its ratio is the least disturbed by other load on the machine
        "train_speedup": round(common.median(per_repeat), 2),
        "ratio_of_median_rates": round(
            common.median([a.tokens_per_second for a in packed]) / common.median([a.tokens_per_second for a in padded]),
            2,
        ),
    }
