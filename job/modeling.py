"""Loading the base model (4-bit NF4 for qlora), choosing the compute dtype by hardware, attaching LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from job import builtin, rundir
from job.config import Config
from job.errors import ConfigInputError, ResourceError

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
    path = rundir.base_model_path(cfg, run_dir)
    if builtin.is_builtin(cfg.model.name):
        builtin.build(cfg.model.name, Path(path))
    return path


def is_encoder_decoder(path: str, cfg: Config) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
    )
    return bool(getattr(config, "is_encoder_decoder", False))


def for_architecture(hw: Hardware, encoder_decoder: bool) -> Hardware:
    """T5-family models overflow in fp16: compute in fp32 on GPUs without bf16."""
    if encoder_decoder and hw.compute_dtype == torch.float16:
        log.info("encoder-decoder model on %s without bf16: computing in fp32 (T5 overflows in fp16)", hw.name)
        return Hardware(device=hw.device, name=hw.name, compute_dtype=torch.float32, capability=hw.capability)
    return hw


def quantization_config(cfg: Config, hw: Hardware):
    from transformers import BitsAndBytesConfig

    if not cfg.quantized:
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


def weights_dtype(cfg: Config, hw: Hardware) -> torch.dtype:
    """The dtype the weights load in. method=full trains every weight: fp32 master weights, computed in the compute
    dtype by autocast (the Trainer's bf16/fp16 mixed precision, `generation.generate`'s autocast), since fp16
    trainable weights stop the GradScaler at the first step and bf16 ones lose small updates. The other methods
    train adapters only and keep the frozen base in the compute dtype."""
    return torch.float32 if cfg.method == "full" else hw.compute_dtype


def ready_for_generation(model, hw: Hardware) -> None:
    """Undo `prepare_model_for_kbit_training`'s fp32 upcast of the frozen non-quantized weights (embeddings, norms,
    lm_head) once training is over: the fine-tuned model then generates with the numerics the base was scored with
    and `predict` reloads (frozen base in the compute dtype, adapter weights in fp32 as PEFT loads them), with the
    KV cache the memory estimate assumes."""
    if hw.compute_dtype == torch.float32:
        return
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32 and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(hw.compute_dtype)


def load_base_model(cfg: Config, path: str, hw: Hardware):
    """The base model for training and scoring: 4-bit NF4 for qlora, compute dtype for the other methods."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    kwargs = dict(
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
        attn_implementation=attention_implementation(cfg, hw),
        dtype=weights_dtype(cfg, hw),
    )
    quant = quantization_config(cfg, hw)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if hw.device == "cuda":  # this rank's GPU, with or without FSDP: the base model is scored before any sharding
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        auto = AutoModelForSeq2SeqLM if is_encoder_decoder(path, cfg) else AutoModelForCausalLM
        model = auto.from_pretrained(path, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise ResourceError(
            f"the GPU ({hw.name}) ran out of memory loading {cfg.model.name}; use method=qlora, a smaller model "
            f"or a GPU with more memory"
        ) from None
    if quant is not None and hw.device == "cpu":
        keep_cpu_4bit_in_compute_dtype(model)
    check_target_modules(model, cfg)
    log.info(
        "loaded %s (%s, %s compute, %s attention) on %s",
        cfg.model.name,
        "4-bit " + cfg.model.quant_type if quant else dtype_name(hw.compute_dtype),
        dtype_name(hw.compute_dtype),
        kwargs["attn_implementation"],
        hw.name,
    )
    return model


def check_target_modules(model, cfg: Config) -> None:
    """Each entry of lora.target_modules must name a module of this model, by PEFT's own matching rule: a typo
    would otherwise stop the run in `get_peft_model`, after the base model was scored (minutes of generation)."""
    targets = cfg.lora.target_modules
    if cfg.method not in ("qlora", "lora") or targets == "all-linear":
        return
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [name for name, _ in model.named_modules() if name]
    wanted = [targets] if isinstance(targets, str) else list(targets)
    missing = [
        t
        for t in wanted
        if not any(
            check_target_module_exists(LoraConfig(target_modules=[t] if isinstance(targets, list) else t), n)
            for n in names
        )
    ]
    if missing:
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
            - {"lm_head"}
        )
        raise ConfigInputError(
            f"lora.target_modules: {', '.join(missing)} {'matches' if len(missing) == 1 else 'match'} no module of "
            f"{cfg.model.name}; its linear layers are named {', '.join(linear)} (or use all-linear)"
        )


def keep_cpu_4bit_in_compute_dtype(model) -> None:
    """bitsandbytes 0.50, on CPUs with AVX512-BF16, repacks a 4-bit layer for a bf16 kernel on its first eval-mode,
    no-grad call (scoring the base model) and keeps it that way: fp32 no longer means fp32, and the repacked layers
    pass no gradient to their inputs, so LoRA below them stops learning. Keep the dequantizing path, which computes
    in the configured dtype."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def add_adapters(model, cfg: Config):
    """Make the model trainable the configured way: LoRA (qlora/lora), soft prompts (prompt_tuning) or every weight
    (full). Returns the model to train (a PEFT model except for full)."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, get_peft_model, prepare_model_for_kbit_training

    task = "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM"
    gc_kwargs = {"use_reentrant": False}
    if cfg.method == "full":
        for param in model.parameters():
            param.requires_grad = True
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        n = sum(p.numel() for p in model.parameters())
        log.warning(
            "method=full trains all %s parameters: about %.1f GB of GPU memory for weights, gradients and AdamW "
            "states before activations (qlora needs a fraction of that)",
            f"{n:,}",
            n * 16 / 1e9,
        )
        _log_counts(model)
        return model
    if cfg.quantized and cfg.model.upcast_non_quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    else:
        for param in model.parameters():
            param.requires_grad = False
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            model.enable_input_require_grads()
    if cfg.method == "prompt_tuning":
        pt = cfg.prompt_tuning
        peft_config = PromptTuningConfig(
            task_type=task,
            num_virtual_tokens=pt.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if pt.init_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=pt.init_text,
            tokenizer_name_or_path=model.name_or_path if pt.init_text else None,
        )
    else:
        peft_config = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            bias=cfg.lora.bias,
            task_type=task,
        )
    model = get_peft_model(model, peft_config)
    _log_counts(model)
    return model


def _log_counts(model) -> None:
    trainable, total = parameter_counts(model)
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)


def save_trained(model, tokenizer, cfg: Config, run_dir: Path, state_dict: dict | None = None) -> Path:
    """The trained weights and tokenizer: the adapter (recording the base model's public name, hub id or builtin:...,
    never the temporary folder it was loaded from) or, for method=full, the whole model. `state_dict`: the whole
    weights gathered from FSDP's shards (None: the model's own)."""
    folder = run_dir / rundir.weights_folder(cfg)
    if cfg.method == "full":
        model.save_pretrained(folder, state_dict=state_dict)
    else:
        model.peft_config["default"].base_model_name_or_path = rundir.public_model_name(cfg)
        model.save_pretrained(folder, save_embedding_layers=False, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    return folder


def parameter_counts(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def load_for_inference(run_dir: Path, cfg: Config, hw: Hardware):
    """The trained model of a finished run and its tokenizer: the base with its adapter, or the full model."""
    from peft import PeftModel

    if cfg.method == "full":
        path = str(run_dir / "model")
        tokenizer = load_tokenizer(path, cfg)
        hw = for_architecture(hw, is_encoder_decoder(path, cfg))
        model = load_base_model(cfg, path, hw)
    else:
        path = rundir.base_model_path(cfg, run_dir)
        tokenizer = load_tokenizer(str(run_dir / "adapter"), cfg)
        hw = for_architecture(hw, is_encoder_decoder(path, cfg))
        model = PeftModel.from_pretrained(load_base_model(cfg, path, hw), run_dir / "adapter")
    model.eval()
    return model, tokenizer
