"""The real 4-bit path on the CPU: bitsandbytes NF4 layers under LoRA, compute dtype by hardware."""

from __future__ import annotations

import pytest
import torch

from job import config as C
from job import modeling


@pytest.fixture(scope="module")
def qlora_model(tmp_path_factory):
    cfg = C.resolve("test")
    run_dir = tmp_path_factory.mktemp("run")
    hw = modeling.detect_hardware()
    path = modeling.resolve_model_path(cfg, run_dir)
    tokenizer = modeling.load_tokenizer(path, cfg)
    base = modeling.load_base_model(cfg, path, hw)
    return cfg, hw, tokenizer, base, run_dir


def test_cpu_computes_in_fp32():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert modeling.detect_hardware().compute_dtype == torch.float32
    assert modeling.detect_hardware("bfloat16").compute_dtype == torch.bfloat16


def test_base_layers_are_4bit_nf4(qlora_model):
    import bitsandbytes as bnb

    _, hw, _, base, _ = qlora_model
    quantized = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    weight = quantized[0].weight
    assert weight.quant_state.quant_type == "nf4"
    assert weight.quant_state.nested  # double quantization
    assert weight.dtype == hw.compute_dtype  # quant storage matches the compute dtype (packed bytes), as FSDP needs
    assert base.is_loaded_in_4bit


def test_lora_wraps_the_4bit_layers_and_only_adapters_train(qlora_model):
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    cfg, _, _, base, _ = qlora_model
    model = modeling.add_adapters(base, cfg)
    wrapped = [m for m in model.modules() if isinstance(m, LoraLinear4bit)]
    assert len(wrapped) == 14
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in wrapped)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    n_trainable, n_total = modeling.parameter_counts(model)
    assert 0 < n_trainable < n_total


def test_the_builtin_model_is_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(modeling.resolve_model_path(C.resolve("test"), tmp_path / "a"))
    b = AutoModelForCausalLM.from_pretrained(modeling.resolve_model_path(C.resolve("test"), tmp_path / "b"))
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na


def test_builtin_tokenizer_covers_any_text():
    from job import builtin

    tok = builtin.load_tokenizer()
    text = "Привет! 你好，世界 — ¿Qué tal? #Person1#: 👍"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
