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
