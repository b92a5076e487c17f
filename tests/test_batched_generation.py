"""Batched evaluation changes nothing but speed: `job.generation.generate` - sorted by length, left-padded batches,
KV cache - gives exactly the greedy summaries that one unpadded `model.generate` call per dialogue gives, in the
dialogues' own order. Checked on the trained `test` run's model (4-bit, fp32 compute on the CPU) and, because that
12-step model may answer every dialogue alike, also on the built-in base model, whose summaries differ per dialogue."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import dialogs
from job import config, generation, modeling, prompts
from job.synthetic import BUILTIN_DIR


@pytest.fixture(scope="module")
def loaded(trained_run):
    cfg = config.build(config.read_yaml(str(trained_run.dir / "config.yaml")))
    hw = modeling.detect_hardware("float32")
    model, tokenizer = modeling.load_for_inference(trained_run.dir, cfg, hw)
    return model, tokenizer, cfg


@pytest.fixture(scope="module")
def base_model(loaded, tmp_path_factory):
    from job import builtin

    _, tokenizer, cfg = loaded
    path = builtin.build(cfg.model.name, tmp_path_factory.mktemp("base"))
    model = modeling.load_base_model(cfg, str(path), modeling.detect_hardware("float32"))
    model.eval()
    return model


@pytest.fixture(scope="module")
def prompt_ids(loaded) -> list[list[int]]:
    """Test dialogues the model was trained for, and longer DialogSum-like ones, so batches carry real padding."""
    _, tokenizer, cfg = loaded
    rows = [json.loads(line) for line in (BUILTIN_DIR / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["dialogue"] for r in rows if r["id"].endswith("_1")][:6] + [e.dialogue for e in dialogs.examples(3)]
    max_prompt = prompts.prompt_budget(cfg.data, encoder_decoder=False)
    return [prompts.prompt_ids_for_generation(tokenizer, cfg.data, t, max_prompt) for t in texts]


@torch.inference_mode()
def one_at_a_time(model, tokenizer, ids: list[list[int]], max_new_tokens: int) -> list[str]:
    config_ = generation.greedy_config(model, tokenizer, max_new_tokens)
    stops = set(config_.eos_token_id)
    out = []
    for p in ids:
        x = torch.tensor([p], device=model.device)
        new = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config_)[0, len(p) :]
        new = new.tolist()
        end = next((k for k, t in enumerate(new) if t in stops), len(new))
        out.append(tokenizer.decode(new[:end], skip_special_tokens=True).strip())
    return out


def batched_and_single(model, tokenizer, ids: list[list[int]], max_new_tokens: int) -> tuple[list[str], list[str]]:
    batch_size = 5  # batches of 5 and 4 prompts: every batch mixes lengths, so left padding is exercised
    lengths = sorted(map(len, ids), reverse=True)
    assert all(len(set(lengths[i : i + batch_size])) > 1 for i in range(0, len(lengths), batch_size))
    batched = generation.generate(model, tokenizer, ids, max_new_tokens, batch_size)
    return batched.texts, one_at_a_time(model, tokenizer, ids, max_new_tokens)


def assert_identical(batched: list[str], single: list[str], ids: list[list[int]]) -> None:
    for i, (a, b) in enumerate(zip(batched, single, strict=True)):
        assert a == b, f"dialogue {i} (prompt of {len(ids[i])} tokens): batched {a!r} != alone {b!r}"


def test_trained_model_batched_summaries_identical_to_one_at_a_time(loaded, prompt_ids):
    model, tokenizer, cfg = loaded
    batched, single = batched_and_single(model, tokenizer, prompt_ids, cfg.eval.max_new_tokens)
    assert_identical(batched, single, prompt_ids)


def test_base_model_batched_summaries_identical_to_one_at_a_time(base_model, loaded, prompt_ids):
    _, tokenizer, cfg = loaded
    batched, single = batched_and_single(base_model, tokenizer, prompt_ids, cfg.eval.max_new_tokens)
    assert len(set(single)) == len(single), f"expected a different continuation per dialogue: {single}"
    assert_identical(batched, single, prompt_ids)
