"""Loading the base model (4-bit NF4 for qlora), choosing the compute dtype by hardware, attaching LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from job import builtin
from job.config import Config
from job.errors import ResourceError

log = logging.getLogger(__name__)


@dataclass
class Hardware:
    device: str  # "cuda" or "cpu"
    name: str
    compute_dtype: torch.dtype
    capability: tuple[int, int] | None


def detect_hardware(requested: str = "auto") -> Hardware:
    """bf16 on GPUs of compute capability >= 8.0, fp16 on older GPUs, fp32 on CPU.

    `torch.cuda.is_bf16_supported()` answers True on a T4 (it emulates bf16, slowly), so the capability decides.
    """
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability(0)
        name = torch.cuda.get_device_name(0)
        dtype = torch.bfloat16 if cap >= (8, 0) else torch.float16
        device = "cuda"
    else:
        cap, name, dtype, device = None, "cpu", torch.float32, "cpu"
    if requested != "auto":
        dtype = getattr(torch, requested)
        if dtype == torch.bfloat16 and cap is not None and cap < (8, 0):
            log.warning(
                "model.compute_dtype=bfloat16 on %s (compute capability %d.%d) is emulated and slow", name, *cap
            )
    return Hardware(device=device, name=name, compute_dtype=dtype, capability=cap)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_model_path(cfg: Config, run_dir: Path) -> str:
    """Where `from_pretrained` loads from: the built-in model saved into the run, a local folder or a hub id."""
    name = cfg.model.name
    if builtin.is_builtin(name):
        return str(builtin.build(name, run_dir / "base_model"))
    return name


def quantization_config(cfg: Config, hw: Hardware):
    from transformers import BitsAndBytesConfig

    if cfg.method != "qlora":
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.model.quant_type,
        bnb_4bit_use_double_quant=cfg.model.double_quant,
        bnb_4bit_compute_dtype=hw.compute_dtype,
        bnb_4bit_quant_storage=hw.compute_dtype,  # matching storage lets FSDP shard 4-bit weights
    )


def attention_implementation(cfg: Config, hw: Hardware) -> str:
    if cfg.model.attn_implementation != "auto":
        return cfg.model.attn_implementation
    if hw.device == "cuda" and hw.capability and hw.capability >= (8, 0):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_tokenizer(path: str, cfg: Config):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        # A pad token distinct from EOS where the vocabulary has one (Llama-3.x reserves one); labels are built
        # explicitly, so EOS stays learned even when pad == EOS.
        reserved = "<|finetune_right_pad_id|>"
        if reserved in tokenizer.get_vocab():
            tokenizer.pad_token = reserved
        else:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(cfg: Config, path: str, hw: Hardware):
    """The base model for training and scoring: 4-bit NF4 for qlora, compute dtype for lora."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
        attn_implementation=attention_implementation(cfg, hw),
        dtype=hw.compute_dtype,
    )
    quant = quantization_config(cfg, hw)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if hw.device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise ResourceError(
            f"the GPU ({hw.name}) ran out of memory loading {cfg.model.name}; use method=qlora, a smaller model "
            f"or a GPU with more memory"
        ) from None
    log.info(
        "loaded %s (%s, %s compute, %s attention) on %s",
        cfg.model.name,
        "4-bit " + cfg.model.quant_type if quant else dtype_name(hw.compute_dtype),
        dtype_name(hw.compute_dtype),
        kwargs["attn_implementation"],
        hw.name,
    )
    return model


def add_lora(model, cfg: Config):
    """Freeze the base, prepare it for k-bit training, attach LoRA adapters; returns the PEFT model."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if cfg.method == "qlora" and cfg.model.upcast_non_quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    else:
        for param in model.parameters():
            param.requires_grad = False
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias=cfg.lora.bias,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


def save_adapter(model, tokenizer, cfg: Config, folder: Path) -> None:
    """The adapter and tokenizer, recording the base model's public name (hub id or builtin:...), never the
    temporary folder it was loaded from."""
    model.peft_config["default"].base_model_name_or_path = cfg.model.name
    model.save_pretrained(folder, save_embedding_layers=False)
    tokenizer.save_pretrained(folder)


def parameter_counts(model) -> tuple[int, int]:
    return model.get_nb_trainable_parameters()


def load_for_inference(run_dir: Path, cfg: Config, hw: Hardware):
    """The base model and tokenizer of a finished run with its adapter applied (for `predict`)."""
    from peft import PeftModel

    name = cfg.model.name
    path = str(run_dir / "base_model") if builtin.is_builtin(name) else name
    tokenizer = load_tokenizer(str(run_dir / "adapter"), cfg)
    base = load_base_model(cfg, path, hw)
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    model.eval()
    return model, tokenizer
