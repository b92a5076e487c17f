"""Padding-free packing is exact: a packed batch gives every example the logits it gets alone, and the same loss as
a padded batch. Checked on the built-in tiny Llama in real 4-bit NF4 and unquantized, in fp32, on the device the
job runs on (the GPU where there is one), with the attention the job picks there.

The premise, from transformers: packed examples are kept apart by position ids only when the forward pass runs
without a cache. With the cache on, later examples attend to earlier ones; that case is checked too, so these tests
fail if the separation ever stops depending on what the job sets (`use_cache=False` in training)."""

from __future__ import annotations

import json

import pytest
import torch

from job import builtin, modeling, prompts, training
from job.config import resolve
from job.synthetic import BUILTIN_DIR
from job.training import make_collator, packing_mode

ATOL = 1e-5  # fp32: packed and separate passes differ only in summation order


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return builtin.build("builtin:tiny-llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module", params=["qlora", "lora"], ids=["4-bit", "unquantized"])
def loaded(request, model_dir):
    cfg = resolve("test", [f"method={request.param}", "model.compute_dtype=float32"])
    hw = modeling.detect_hardware("float32")
    model = modeling.load_base_model(cfg, str(model_dir), hw)
    # Training mode, as the job trains (the base Llama has no dropout). It also matters for 4-bit: bitsandbytes 0.50
    # on CPUs with AVX512-BF16 repacks a Linear4bit's weights for a bf16 kernel on its first eval-mode, no-grad call.
    model.train()
    if request.param == "qlora":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()), "expected real 4-bit layers"
    return model, modeling.load_tokenizer(str(model_dir), cfg), cfg


@pytest.fixture(scope="module")
def features(loaded):
    _, tokenizer, cfg = loaded
    return encoded_examples(tokenizer, cfg)


def encoded_examples(tokenizer, cfg) -> list[dict]:
    """Three training examples of clearly different lengths, encoded as the job encodes them."""
    rows = [json.loads(line) for line in (BUILTIN_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()[:40]]
    rows.sort(key=lambda r: len(r["dialogue"]))
    picked = [rows[-1], rows[0], rows[len(rows) // 2]]
    out = []
    for r in picked:
        enc = prompts.encode_example(tokenizer, cfg.data, r["dialogue"], r["summary"])
        out.append({"input_ids": enc.input_ids, "labels": enc.labels})
    assert len({len(f["input_ids"]) for f in out}) == 3
    return out


def packed_and_separate(model, tokenizer, features, use_cache: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(packed slice, separate) logits per example."""
    batch = make_collator("padding_free", tokenizer)(features)
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    batch = {k: v.to(model.device) for k, v in batch.items()}
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=use_cache).logits[0]
        pairs, start = [], 0
        for f in features:
            ids = torch.tensor([f["input_ids"]], device=model.device)
            alone = model(input_ids=ids, use_cache=use_cache).logits[0]
            pairs.append((packed[start : start + ids.shape[1]], alone))
            start += ids.shape[1]
    assert start == packed.shape[0]
    return pairs


def test_packed_logits_equal_separate_without_cache(loaded, features):
    model, tokenizer, _ = loaded
    for i, (packed, alone) in enumerate(packed_and_separate(model, tokenizer, features, use_cache=False)):
        diff = (packed - alone).abs().max().item()
        assert diff < ATOL, f"example {i}: packed logits differ from its own forward pass by {diff:.2e}"


def test_with_cache_on_later_examples_see_earlier_ones(loaded, features):
    """The premise: without use_cache=False packing is NOT exact, so the test above can fail."""
    model, tokenizer, _ = loaded
    pairs = packed_and_separate(model, tokenizer, features, use_cache=True)
    first = (pairs[0][0] - pairs[0][1]).abs().max().item()
    later = [(p - a).abs().max().item() for p, a in pairs[1:]]
    assert first < ATOL  # nothing precedes the first example
    assert min(later) > 1e-3, f"expected cross-example attention with the cache on; max differences {later}"


def test_packed_loss_equals_padded_loss(loaded, features):
    """Same summary tokens learned, none across an example boundary: the loss matches a padded batch's."""
    model, tokenizer, _ = loaded
    assert_same_loss_as_padded(model, tokenizer, features)


def assert_same_loss_as_padded(model, tokenizer, features) -> None:
    packed = make_collator("padding_free", tokenizer)(features)
    padded = make_collator("group_by_length", tokenizer)(features)
    assert padded["input_ids"].shape[0] == len(features) and (padded["attention_mask"] == 0).any()
    packed, padded = ({k: v.to(model.device) for k, v in b.items()} for b in (packed, padded))
    with torch.no_grad():
        loss_packed = model(**packed, use_cache=False).loss.item()
        loss_padded = model(**padded, use_cache=False).loss.item()
    learned = sum(sum(1 for t in f["labels"] if t != -100) for f in features)
    assert int((packed["labels"] != -100).sum()) == learned
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_on_sdpa_and_eager_is_exact(model_dir, attn):
    """What a True entry of PADDING_FREE_ON_SDPA rests on, checked on the device the tests run on with that attention
    forced: each packed example gets the logits it gets alone, and the loss of the padded batch."""
    cfg = resolve("test", [f"model.attn_implementation={attn}", "model.compute_dtype=float32"])
    hw = modeling.detect_hardware("float32")
    model = modeling.load_base_model(cfg, str(model_dir), hw)
    model.train()
    assert model.config._attn_implementation == attn
    tokenizer = modeling.load_tokenizer(str(model_dir), cfg)
    features = encoded_examples(tokenizer, cfg)
    for i, (packed, alone) in enumerate(packed_and_separate(model, tokenizer, features, use_cache=False)):
        diff = (packed - alone).abs().max().item()
        assert diff < ATOL, f"{attn}, example {i}: packed logits differ from its own forward pass by {diff:.2e}"
    assert_same_loss_as_padded(model, tokenizer, features)


CPU = modeling.Hardware(device="cpu", name="cpu", compute_dtype=torch.float32, capability=None)
GPU = modeling.Hardware(device="cuda", name="A10G", compute_dtype=torch.bfloat16, capability=(8, 6))


@pytest.mark.parametrize("measured_faster", [True, False])
def test_auto_packs_on_sdpa_exactly_where_a_figure_says_it_is_faster(monkeypatch, measured_faster):
    """Flash attention always packs; SDPA/eager pack where PADDING_FREE_ON_SDPA (a measured figure) says so, else
    group by length; encoder-decoders never pack; an explicit train.packing wins."""
    cfg = resolve("test", [])
    for hw in (CPU, GPU):
        monkeypatch.setitem(training.PADDING_FREE_ON_SDPA, hw.device, measured_faster)
        expected = "padding_free" if measured_faster else "group_by_length"
        assert packing_mode(cfg, hw, "sdpa") == packing_mode(cfg, hw, "eager") == expected, hw.device
        assert packing_mode(cfg, hw, "sdpa", encoder_decoder=True) == "group_by_length"
        assert packing_mode(resolve("test", ["train.packing=padding_free"]), hw, "sdpa") == "padding_free"
    assert packing_mode(cfg, GPU, "flash_attention_2") == "padding_free"


def test_no_device_packs_on_sdpa_without_a_recorded_figure():
    """CUDA has no GPU figure yet; the CPU's measured 0.90x group-by-length (docs/speed.md)."""
    assert training.PADDING_FREE_ON_SDPA == {"cpu": False, "cuda": False}


@pytest.mark.parametrize("packing", ["padding_free", "auto"])
def test_the_trainer_trains_with_the_packing_it_picks(model_dir, tmp_path, packing):
    """The job's Trainer path end to end for two steps: forced padding-free feeds no padding; `auto` on this device
    feeds what PADDING_FREE_ON_SDPA decides (group-by-length pads a little)."""
    from datasets import Dataset

    cfg = resolve(
        "test",
        [f"train.packing={packing}", "train.max_steps=2", "train.save_steps=2", "train.eval_steps=2",
         "train.logging_steps=1", "train.best_by_eval_loss=false", "train.gradient_accumulation_steps=1"],
    )  # fmt: skip
    hw = modeling.detect_hardware(cfg.model.compute_dtype)
    attn = modeling.attention_implementation(cfg, hw)
    model = modeling.add_adapters(modeling.load_base_model(cfg, str(model_dir), hw), cfg)
    tokenizer = modeling.load_tokenizer(str(model_dir), cfg)
    rows = [json.loads(line) for line in (BUILTIN_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()[:16]]
    _, result = training.train(model, tokenizer, {"train": Dataset.from_list(rows)}, cfg, hw, tmp_path,
                               tmp_path / "checkpoints", attn)  # fmt: skip
    packs = packing == "padding_free" or training.PADDING_FREE_ON_SDPA[hw.device]
    assert (result.padding_fraction == 0) == packs, result.padding_fraction
    assert result.tokens_per_second > 0
