"""GPU memory estimate: parameter counts against published model sizes, the parts' behaviour, and fit messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from job import config, memory

LLAMA_3B = str(Path(config.__file__).parent / "presets" / "llama-3.2-3b-qlora.yaml")


def resolve(*overrides: str) -> config.Config:
    return config.resolve(LLAMA_3B, list(overrides))


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("meta-llama/Llama-3.2-1B", 1.24e9),
        ("meta-llama/Llama-3.2-3B", 3.21e9),
        ("meta-llama/Llama-3.1-8B", 8.03e9),
        ("mistralai/Mistral-7B-v0.3", 7.25e9),
        ("Qwen/Qwen2.5-7B", 7.62e9),
        ("google/flan-t5-base", 0.248e9),
        ("google/flan-t5-large", 0.783e9),
    ],
)
def test_parameter_counts_match_published_sizes(name: str, published: float) -> None:
    total = memory.parameter_counts(memory.architecture(name))["total"]
    assert total == pytest.approx(published, rel=0.03)


def test_instruct_variants_and_local_folders_resolve(tmp_path: Path) -> None:
    assert memory.architecture("meta-llama/Llama-3.2-3B-Instruct") == memory.ARCHITECTURES["meta-llama/Llama-3.2-3B"]
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 3072,
                "num_hidden_layers": 28,
                "intermediate_size": 8192,
                "num_attention_heads": 24,
                "num_key_value_heads": 8,
                "head_dim": 128,
                "vocab_size": 128256,
                "tie_word_embeddings": True,
            }
        )
    )
    assert memory.architecture(str(tmp_path)) == memory.ARCHITECTURES["meta-llama/Llama-3.2-3B"]
    with pytest.raises(memory.UnknownArchitecture, match="known:"):
        memory.architecture("someone/unheard-of-model")


def test_a_local_folder_of_another_architecture_is_unknown_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768, "n_head": 12}))
    with pytest.raises(memory.UnknownArchitecture, match="has no 'num_attention_heads'"):
        memory.architecture(str(tmp_path))


def test_t5_config_json_is_read(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12, "d_kv": 64,
             "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
        )
    )  # fmt: skip
    assert memory.architecture(str(tmp_path)) == memory.ARCHITECTURES["google/flan-t5-base"]
    cfg = config.resolve("test", [f"model.name={tmp_path}"])
    assert memory.estimate_gpu_memory(cfg)["total"] > memory.estimate_gpu_memory(config.resolve("test"))["total"]


def test_lora_parameter_count_matches_peft_for_llama_3b() -> None:
    # PEFT reports 24,313,856 trainable parameters for r=16 all-linear on Llama-3.2-3B.
    arch = memory.architecture("meta-llama/Llama-3.2-3B")
    assert memory.lora_parameters(arch, 16, "all-linear") == 24_313_856
    assert memory.lora_parameters(arch, 16, ["q_proj", "v_proj"]) < memory.lora_parameters(arch, 16, "all-linear")


def test_published_recipe_fits_a_24gb_gpu_with_4bit_weights() -> None:
    est = memory.estimate_gpu_memory(resolve())
    # 2.82B linear weights at ~0.516 byte each
    assert est["weights"] == pytest.approx(2.82e9 * 0.516 / 2**30, rel=0.02)
    assert est["logits"] > est["activations"]  # a 128k vocabulary dominates with gradient checkpointing on
    assert est["total"] < memory.GPU_MEMORY_GB["A10G"] * memory.USABLE_FRACTION
    assert memory.fit_message(resolve(), "A10G", memory.GPU_MEMORY_GB["A10G"]) is None


def test_parts_move_the_way_the_settings_say() -> None:
    base = memory.estimate_gpu_memory(resolve())
    assert memory.estimate_gpu_memory(resolve("method=lora"))["weights"] > 3 * base["weights"]
    no_gc = memory.estimate_gpu_memory(resolve("train.gradient_checkpointing=false"))
    assert no_gc["activations"] > 5 * base["activations"]
    double = memory.estimate_gpu_memory(resolve("train.batch_size=8"))
    assert double["logits"] == pytest.approx(2 * base["logits"], rel=0.01)
    assert memory.estimate_gpu_memory(resolve("model.double_quant=false"))["weights"] > base["weights"]


def test_fit_message_names_the_setting_to_lower() -> None:
    cfg = resolve("train.batch_size=16", "train.gradient_accumulation_steps=1")
    message = memory.fit_message(cfg, "A10G", memory.GPU_MEMORY_GB["A10G"])
    assert message is not None and "\n" not in message
    assert "A10G" in message and "train.batch_size to " in message
    # the suggested batch really fits
    batch = int(message.split("train.batch_size to ")[1].split()[0])
    assert memory.fits(resolve(f"train.batch_size={batch}"), memory.GPU_MEMORY_GB["A10G"])


def test_fit_message_names_a_larger_gpu_when_no_setting_helps() -> None:
    cfg = resolve("model.name=meta-llama/Llama-3.1-8B-Instruct", "method=lora", "train.batch_size=1")
    message = memory.fit_message(cfg, "T4", memory.GPU_MEMORY_GB["T4"])
    assert message is not None
    assert "use a GPU with more memory" in message and "L40S" in message


def test_unknown_model_is_not_judged() -> None:
    assert memory.fit_message(resolve("model.name=someone/unheard-of-model"), "T4", 14.7) is None


def test_builtin_model_fits_anything() -> None:
    est = memory.estimate_gpu_memory(config.resolve("test"))
    assert est["total"] < 1.0


# ----------------------------------------------------------------------------------------------
# The estimate's terms against a measured peak: torch's own MemTracker counts every tensor alive, on the CPU.


def _measured_peak(fn, *tracked) -> dict:
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*tracked)
    with tracker:
        fn()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_the_loss_term_is_what_the_loss_holds_at_its_peak(dtype_name: str) -> None:
    """transformers' causal-LM loss on logits in the compute dtype: the logits, their fp32 upcast, log-softmax and
    the gradients, measured per logit. The term once counted 8 bytes; the loss holds 14 in bf16, 16 in fp32."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    dtype = getattr(torch, dtype_name)
    batch, length, vocab = 4, 512, 1024
    logits = torch.randn(batch, length, vocab, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length))
    peak = _measured_peak(lambda: ForCausalLMLoss(logits, labels, vocab).backward(), logits)
    assert peak["Total"] / (batch * length * vocab) == pytest.approx(memory.logits_bytes(dtype.itemsize), abs=0.01)


def test_a_training_step_stays_within_the_estimate(tmp_path: Path) -> None:
    """A whole step of the tiny Llama (every weight trained, so MemTracker can follow every gradient; activation
    checkpointing on): what the step holds beyond its weights and gradients at its peak is at most the estimate's
    activations + logits, and not far below (the estimate adds their peaks, which do not coincide)."""
    import torch

    from job import builtin, modeling

    folder = builtin.build("builtin:tiny-llama", tmp_path / "tiny")
    cfg = config.resolve("test", ["method=full", "train.gradient_checkpointing=true", "train.batch_size=4"])
    model = modeling.add_adapters(modeling.load_base_model(cfg, str(folder), modeling.detect_hardware("float32")), cfg)
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (cfg.train.batch_size, cfg.data.max_length))
    peak = _measured_peak(lambda: model(input_ids=ids, labels=ids).loss.backward(), model)
    measured = sum(v for k, v in peak.items() if getattr(k, "value", None) in ("Activation", "Temp"))
    est = memory.estimate_bytes(cfg, memory.architecture(str(folder)), compute_bytes=4)
    assert measured <= est["activations"] + est["logits"] <= 2.5 * measured


def test_the_3b_preset_counts_the_fp32_residual_stream_and_the_lm_head_copy() -> None:
    """QLoRA with prepare_model_for_kbit_training: the checkpointed block inputs are fp32, and the tied embedding's
    fp32 weight gets a bf16 copy under autocast for the lm_head, kept for the backward pass."""
    est = memory.estimate_bytes(resolve())
    arch = memory.architecture("meta-llama/Llama-3.2-3B")
    assert est["lm_head_copy"] == arch["vocab"] * arch["hidden"] * 2
    assert est["logits"] == 4 * 1024 * arch["vocab"] * 14
    no_upcast = memory.estimate_bytes(resolve("model.upcast_non_quantized=false"))
    assert no_upcast["lm_head_copy"] == 0 and no_upcast["activations"] < est["activations"]
    gib = memory.estimate_gpu_memory(resolve())["total"]
    assert 12 < gib < memory.GPU_MEMORY_GB["T4"] * memory.USABLE_FRACTION  # fits a T4, tightly


def test_full_fine_tuning_counts_fp32_master_weights_gradients_and_adamw() -> None:
    est = memory.estimate_bytes(resolve("method=full", "model.load_in_4bit=false"))
    total = memory.parameter_counts(memory.architecture("meta-llama/Llama-3.2-3B"))["total"]
    assert est["weights"] + est["non_quantized"] + est["lora_and_optimizer"] == total * 16
