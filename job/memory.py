"""How much GPU memory a config needs, estimated from the model's shape without loading it.

The launchers use it to refuse an instance whose GPU is too small before any GPU second is paid for; the job's
preflight can use it to say what to lower before it starts. Imports neither torch nor transformers.

All figures are GiB (2**30 bytes), the unit `torch.cuda.get_device_properties(0).total_memory` reports once
divided by 2**30; keys end in `_gb` for brevity. The estimate is deliberately simple (a sum of the big parts,
see `estimate_gpu_memory`) and errs on the high side: a config it accepts should not run out of memory.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from job.builtin import TINY_LLAMA
from job.config import Config

GIB = 2**30

# Memory a GPU offers to PyTorch (total_memory / 2**30), by the model names the catalogs use.
GPU_MEMORY_GB: dict[str, float] = {
    "T4": 14.7,
    "A10G": 22.0,
    "L4": 22.0,
    "L40S": 44.4,
    "A100-40GB": 39.4,
    "H100": 79.1,
}

# Share of the GPU's memory a run may plan to use: the allocator's fragmentation and other processes take the rest.
USABLE_FRACTION = 0.92

CUDA_CONTEXT_GB = 0.6  # CUDA context, cuBLAS workspaces and kernels loaded by torch and bitsandbytes

# Architecture numbers of the models we expect, so the estimate needs no download. `kind` decoder: a Llama-style
# decoder (gated MLP); t5: an encoder-decoder with gated-GELU feed-forward (FLAN-T5).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.2-1B": dict(
        kind="decoder", hidden=2048, layers=16, intermediate=8192, heads=32, kv_heads=8, head_dim=64,
        vocab=128256, tied=True,
    ),
    "meta-llama/Llama-3.2-3B": dict(
        kind="decoder", hidden=3072, layers=28, intermediate=8192, heads=24, kv_heads=8, head_dim=128,
        vocab=128256, tied=True,
    ),
    "meta-llama/Llama-3.1-8B": dict(
        kind="decoder", hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
        vocab=128256, tied=False,
    ),
    "mistralai/Mistral-7B-v0.3": dict(
        kind="decoder", hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
        vocab=32768, tied=False,
    ),
    "Qwen/Qwen2.5-7B": dict(
        kind="decoder", hidden=3584, layers=28, intermediate=18944, heads=28, kv_heads=4, head_dim=128,
        vocab=152064, tied=False,
    ),
    "google/flan-t5-base": dict(
        kind="t5", hidden=768, layers=12, decoder_layers=12, intermediate=2048, heads=12, kv_heads=12,
        head_dim=64, vocab=32128, tied=False,
    ),
    "google/flan-t5-large": dict(
        kind="t5", hidden=1024, layers=24, decoder_layers=24, intermediate=2816, heads=16, kv_heads=16,
        head_dim=64, vocab=32128, tied=False,
    ),
    "builtin:tiny-llama": dict(
        kind="decoder", hidden=TINY_LLAMA["hidden_size"], layers=TINY_LLAMA["num_hidden_layers"],
        intermediate=TINY_LLAMA["intermediate_size"], heads=TINY_LLAMA["num_attention_heads"],
        kv_heads=TINY_LLAMA["num_key_value_heads"],
        head_dim=TINY_LLAMA["hidden_size"] // TINY_LLAMA["num_attention_heads"],
        vocab=2048, tied=TINY_LLAMA["tie_word_embeddings"],
    ),
}  # fmt: skip

# Fine-tuned variants share their base model's shape: `-Instruct`, `-it`, `-Chat` suffixes are dropped to look up.
_VARIANT_SUFFIX = re.compile(r"-(instruct|it|chat)(-.*)?$", re.IGNORECASE)

# bitsandbytes 4-bit: 0.5 byte per weight plus one absmax per 64-weight block (fp32, or 8-bit with a fp32 constant
# per 256 blocks under double quantization).
NF4_BYTES = 0.5
ABSMAX_BYTES = 4 / 64
DOUBLE_QUANT_ABSMAX_BYTES = 1 / 64 + 4 / (64 * 256)

# Per LoRA parameter: fp32 weight + fp32 gradient + AdamW's two moments (fp32, or 8-bit for *_8bit optimizers).
LORA_BYTES_ADAMW = 4 + 4 + 8
LORA_BYTES_ADAMW_8BIT = 4 + 4 + 2

# Activations saved for the backward pass, per token and layer, in 16-bit elements: a Llama block keeps about a
# dozen hidden-sized tensors (norm outputs, q/k/v/o inputs and outputs, residuals, LoRA inputs) and five
# intermediate-sized ones (gate, up, activation, product, down input). Attention is SDPA/flash: no seq^2 term.
ACT_HIDDEN_TENSORS = 12
ACT_INTERMEDIATE_TENSORS = 5
ACT_BYTES = 2

# Per logit (vocab x tokens), at the loss's peak: the logits in the compute dtype (kept in the model's output until
# the step ends), then transformers' ForCausalLMLoss upcasts them to fp32 and cross_entropy's log-softmax keeps its
# fp32 output for the backward pass, which holds the fp32 gradient of that output and of its input at once before
# casting it back: compute-dtype bytes + 3 x 4. With a 128k vocabulary this is the largest single part of a QLoRA
# step (14 bytes in bf16; the upcast copy is the logits themselves in fp32).
LOSS_FP32_BYTES = 3 * 4


class UnknownArchitecture(LookupError):
    """The model's shape is neither in ARCHITECTURES nor in a local config.json."""


def architecture(model_name: str) -> dict[str, Any]:
    """The architecture numbers for a hub id, a fine-tuned variant of one, or a local folder with config.json (a
    SageMaker channel, `channel:model`, included)."""
    from job import runtime

    folder = runtime.channel_path(model_name) or Path(model_name)
    if (folder / "config.json").is_file():
        try:
            return from_hf_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        except KeyError as e:
            raise UnknownArchitecture(
                f"{folder / 'config.json'} has no {e.args[0]!r}: "
                "only Llama-style decoders and T5 have architecture numbers"
            ) from None
    if model_name in ARCHITECTURES:
        return ARCHITECTURES[model_name]
    base = _VARIANT_SUFFIX.sub("", model_name)
    for known, arch in ARCHITECTURES.items():
        if known.lower() == base.lower():
            return arch
    raise UnknownArchitecture(
        f"no architecture numbers for {model_name!r}; known: {', '.join(ARCHITECTURES)} (or a local folder with config.json)"
    )


def from_hf_config(c: dict[str, Any]) -> dict[str, Any]:
    """Architecture numbers from a transformers config.json (Llama-style decoders and T5)."""
    if "d_model" in c:  # T5 family
        return dict(
            kind="t5",
            hidden=c["d_model"],
            layers=c["num_layers"],
            decoder_layers=c.get("num_decoder_layers") or c["num_layers"],
            intermediate=c["d_ff"],
            heads=c["num_heads"],
            kv_heads=c["num_heads"],
            head_dim=c.get("d_kv", c["d_model"] // c["num_heads"]),
            vocab=c["vocab_size"],
            tied=bool(c.get("tie_word_embeddings", False)),
        )
    heads = c["num_attention_heads"]
    return dict(
        kind="decoder",
        hidden=c["hidden_size"],
        layers=c["num_hidden_layers"],
        intermediate=c["intermediate_size"],
        heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        vocab=c["vocab_size"],
        tied=bool(c.get("tie_word_embeddings", False)),
    )


def linear_shapes(arch: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """(module name, in features, out features, how many in the model) for every linear layer inside the blocks."""
    h, i = arch["hidden"], arch["intermediate"]
    q, kv = arch["heads"] * arch["head_dim"], arch["kv_heads"] * arch["head_dim"]
    if arch["kind"] == "t5":
        enc, dec = arch["layers"], arch["decoder_layers"]
        attn = enc + 2 * dec  # encoder self, decoder self and decoder cross attention
        blocks = enc + dec
        return [
            ("q", h, q, attn),
            ("k", h, kv, attn),
            ("v", h, kv, attn),
            ("o", q, h, attn),
            ("wi_0", h, i, blocks),
            ("wi_1", h, i, blocks),
            ("wo", i, h, blocks),
        ]
    n = arch["layers"]
    return [
        ("q_proj", h, q, n),
        ("k_proj", h, kv, n),
        ("v_proj", h, kv, n),
        ("o_proj", q, h, n),
        ("gate_proj", h, i, n),
        ("up_proj", h, i, n),
        ("down_proj", i, h, n),
    ]


def parameter_counts(arch: dict[str, Any]) -> dict[str, int]:
    """`linear` (quantizable block weights), `other` (embeddings, lm_head; norms are negligible), `total`."""
    linear = sum(fan_in * fan_out * count for _, fan_in, fan_out, count in linear_shapes(arch))
    embeddings = arch["vocab"] * arch["hidden"] * (1 if arch["tied"] else 2)
    return {"linear": linear, "other": embeddings, "total": linear + embeddings}


def lora_parameters(arch: dict[str, Any], r: int, target_modules: list[str] | str) -> int:
    """Trainable LoRA parameters: r x (in + out) for each targeted linear layer."""
    total = 0
    for name, fan_in, fan_out, count in linear_shapes(arch):
        if target_modules == "all-linear" or name in target_modules:
            total += r * (fan_in + fan_out) * count
    return total


def _layers(arch: dict[str, Any]) -> int:
    return arch["layers"] + arch.get("decoder_layers", 0)


def logits_bytes(compute_bytes: int = ACT_BYTES) -> int:
    return compute_bytes + LOSS_FP32_BYTES


def estimate_gpu_memory(
    cfg: Config, arch: dict[str, Any] | None = None, compute_bytes: int = ACT_BYTES
) -> dict[str, float]:
    """`estimate_bytes` in GiB, rounded to 0.01."""
    return {k: round(v / GIB, 2) for k, v in estimate_bytes(cfg, arch, compute_bytes).items()}


def estimate_bytes(cfg: Config, arch: dict[str, Any] | None = None, compute_bytes: int = ACT_BYTES) -> dict[str, float]:
    """Bytes per part of a training step (and of the evaluation's generation) for this config on one GPU.

    Parts: `weights` (4-bit for qlora, 16-bit for lora, fp32 master weights for full), `non_quantized` (embeddings
    and lm_head, fp32 when model.upcast_non_quantized or method=full), `lora_and_optimizer` (LoRA weights,
    gradients, AdamW states; for full every weight's gradient and AdamW states), `activations`
    (data.max_length x train.batch_size tokens, with or without gradient checkpointing), `logits` (the loss's
    fp32 upcast, log-softmax and gradients, see LOSS_FP32_BYTES), `lm_head_copy`, `generation`
    (KV cache of eval.batch_size prompts), `cuda_overhead`, and `total` = weights + the larger of training and
    generation + overhead. `arch` overrides the lookup of cfg.model.name (see `architecture`); `compute_bytes` is
    the compute dtype's element size (2 on GPUs; 4 to compare with a CPU's fp32 run).

    With model.upcast_non_quantized (qlora), prepare_model_for_kbit_training makes the embeddings and norms fp32, so
    the residual stream, and with it each checkpointed block input, is fp32; the lm_head's fp32 weight is cast to a
    compute-dtype copy by autocast and kept for the backward pass (`lm_head_copy`; with tied embeddings it is the
    embedding matrix).
    """
    arch = arch or architecture(cfg.model.name)
    counts = parameter_counts(arch)
    h, i = arch["hidden"], arch["intermediate"]

    if cfg.method == "qlora":
        per_weight = NF4_BYTES + (DOUBLE_QUANT_ABSMAX_BYTES if cfg.model.double_quant else ABSMAX_BYTES)
        weights = counts["linear"] * per_weight
        non_quantized = counts["other"] * (4 if cfg.model.upcast_non_quantized else 2)
    elif cfg.method == "full":  # fp32 master weights (job.modeling.weights_dtype), computed under autocast
        weights = counts["linear"] * 4
        non_quantized = counts["other"] * 4
    else:
        weights = counts["linear"] * 2
        non_quantized = counts["other"] * 2

    eight_bit = "8bit" in cfg.train.optimizer or (cfg.train.optimizer == "auto" and cfg.method == "qlora")
    if cfg.method == "full":  # every weight's fp32 gradient and AdamW moments (the weights are counted above)
        lora_and_optimizer = counts["total"] * (LORA_BYTES_ADAMW - 4)
    else:
        lora = lora_parameters(arch, cfg.lora.r, cfg.lora.target_modules)
        lora_and_optimizer = lora * (LORA_BYTES_ADAMW_8BIT if eight_bit else LORA_BYTES_ADAMW)

    upcast = cfg.method == "qlora" and cfg.model.upcast_non_quantized
    residual_bytes = 4 if upcast else compute_bytes
    tokens = cfg.data.max_length * cfg.train.batch_size
    per_token_layer = compute_bytes * (ACT_HIDDEN_TENSORS * h + ACT_INTERMEDIATE_TENSORS * i)
    if cfg.train.gradient_checkpointing:  # each block's input kept, one block recomputed at a time
        activations = _layers(arch) * tokens * h * residual_bytes + tokens * per_token_layer
    else:
        activations = _layers(arch) * tokens * per_token_layer
    # A seq2seq model's logits cover only the summary (decoder) tokens.
    logit_tokens = cfg.train.batch_size * (cfg.data.max_summary_tokens if arch["kind"] == "t5" else cfg.data.max_length)
    logits = logit_tokens * arch["vocab"] * logits_bytes(compute_bytes)
    lm_head_copy = arch["vocab"] * h * compute_bytes if (upcast and compute_bytes < 4) else 0

    gen_tokens = cfg.eval.batch_size * (cfg.data.max_length + cfg.eval.max_new_tokens)
    kv_cache = _layers(arch) * gen_tokens * 2 * arch["kv_heads"] * arch["head_dim"] * ACT_BYTES
    # Without gradients only one block's transient tensors live at a time: the MLP's are the largest.
    prefill = gen_tokens * ACT_BYTES * (2 * h + 3 * i)
    generation = kv_cache + prefill

    parts = {
        "weights": weights,
        "non_quantized": non_quantized,
        "lora_and_optimizer": lora_and_optimizer,
        "activations": activations,
        "logits": logits,
        "lm_head_copy": lm_head_copy,
        "generation": generation,
        "cuda_overhead": CUDA_CONTEXT_GB * GIB,
    }
    static = parts["weights"] + parts["non_quantized"] + parts["lora_and_optimizer"]
    peak = max(parts["activations"] + parts["logits"] + parts["lm_head_copy"], parts["generation"])
    parts["total"] = static + peak + parts["cuda_overhead"]
    return parts


def fits(cfg: Config, gpu_mem_gb: float, arch: dict[str, Any] | None = None) -> bool:
    return estimate_gpu_memory(cfg, arch)["total"] <= gpu_mem_gb * USABLE_FRACTION


def _with(cfg: Config, **changes: Any) -> Config:
    """A copy of cfg with changes (`method="qlora"`, `train__batch_size=2` for train.batch_size)."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        *section, name = key.split("__")
        setattr(getattr(out, section[0]) if section else out, name, value)
    return out


def _smaller_batch(cfg: Config, gpu_mem_gb: float, arch: dict[str, Any]) -> Config | None:
    """Halve the batch (doubling accumulation keeps the effective batch) until it fits; None if batch 1 doesn't."""
    batch, accumulation = cfg.train.batch_size, cfg.train.gradient_accumulation_steps
    while batch > 1:
        batch, accumulation = max(1, batch // 2), accumulation * 2
        candidate = _with(cfg, train__batch_size=batch, train__gradient_accumulation_steps=accumulation)
        if fits(candidate, gpu_mem_gb, arch):
            return candidate
    return None


def _smaller_eval_batch(cfg: Config, gpu_mem_gb: float, arch: dict[str, Any]) -> Config | None:
    batch = cfg.eval.batch_size
    while batch > 1:
        batch = max(1, batch // 2)
        candidate = _with(cfg, eval__batch_size=batch)
        if fits(candidate, gpu_mem_gb, arch):
            return candidate
    return None


def fit_message(cfg: Config, gpu_name: str, gpu_mem_gb: float) -> str | None:
    """None when the config fits a `gpu_name` GPU with `gpu_mem_gb` GiB; else one line saying what to lower or
    which GPU fits. Also None when the model's shape is unknown (nothing to judge by)."""
    try:
        arch = architecture(cfg.model.name)
    except UnknownArchitecture:
        return None
    need = estimate_gpu_memory(cfg, arch)
    if need["total"] <= gpu_mem_gb * USABLE_FRACTION:
        return None

    fixes: list[str] = []
    if need["generation"] > need["activations"] + need["logits"] + need["lm_head_copy"]:
        smaller_eval = _smaller_eval_batch(cfg, gpu_mem_gb, arch)
        if smaller_eval is not None:
            fixes.append(f"lower eval.batch_size to {smaller_eval.eval.batch_size}")
    smaller = _smaller_batch(cfg, gpu_mem_gb, arch)
    if smaller is not None:
        fixes.append(
            f"lower train.batch_size to {smaller.train.batch_size} with "
            f"train.gradient_accumulation_steps={smaller.train.gradient_accumulation_steps} "
            f"(same effective batch, ~{estimate_gpu_memory(smaller, arch)['total']:.1f} GB)"
        )
    if not cfg.train.gradient_checkpointing and fits(_with(cfg, train__gradient_checkpointing=True), gpu_mem_gb, arch):
        fixes.append("set train.gradient_checkpointing=true")
    if cfg.method == "lora" and fits(_with(cfg, method="qlora"), gpu_mem_gb, arch):
        fixes.append("set method=qlora")
    larger = [name for name, mem in GPU_MEMORY_GB.items() if mem > gpu_mem_gb and fits(cfg, mem, arch)]
    if larger:
        fixes.append(f"use a GPU with more memory ({', '.join(larger)})")
    big = sorted((k for k in need if k not in ("total", "cuda_overhead")), key=lambda k: -need[k])[:2]
    detail = ", ".join(f"{k} {need[k]:.1f}" for k in big)
    advice = "; or ".join(fixes) if fixes else "lower data.max_length and train.batch_size (no single change fits)"
    return (
        f"{cfg.model.name} needs ~{need['total']:.1f} GB of GPU memory ({detail}), more than the "
        f"{gpu_name}'s {gpu_mem_gb:.1f} GB allow: {advice}"
    )
