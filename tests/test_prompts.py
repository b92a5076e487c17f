"""Prompt rendering and training labels: reproducible chat templates, summary-only loss, EOS learned,
truncation on the dialogue side only."""

from __future__ import annotations

from datetime import datetime

import pytest

from job import builtin, prompts
from job.config import DataConfig

# The date logic of Llama-3.2-Instruct's chat template: it prints today's date unless `date_string` is given.
LLAMA32_LIKE_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: ' "
    "+ date_string + '\\n\\n' }}"
    "{%- for m in messages %}{%- if m.role == 'system' %}{{- m.content }}{%- endif %}{%- endfor %}"
    "{{- '<|eot_id|>' }}"
    "{%- for m in messages %}{%- if m.role != 'system' %}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@pytest.fixture
def tokenizer():
    return builtin.load_tokenizer()


@pytest.fixture
def chat_tokenizer():
    tok = builtin.load_tokenizer()
    tok.chat_template = LLAMA32_LIKE_TEMPLATE
    return tok


def _freeze_today(monkeypatch, day: datetime):
    import transformers.utils.chat_template_utils as ctu

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(ctu, "datetime", Frozen)


def test_chat_prompt_is_identical_on_two_dates(chat_tokenizer, monkeypatch):
    cfg = DataConfig(system_prompt="You summarize dialogues.")
    messages = [{"role": "user", "content": "hi"}]
    rendered, naive = [], []
    for day in (datetime(2025, 1, 2), datetime(2026, 11, 23)):
        _freeze_today(monkeypatch, day)
        rendered.append(prompts.render_prompt(chat_tokenizer, cfg, "#Person1#: Hello."))
        naive.append(chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert naive[0] != naive[1], "the template should print today's date when not fixed (test premise)"
    assert rendered[0] == rendered[1]
    assert "Today Date: 26 Jul 2024" in rendered[0]
    assert "You summarize dialogues." in rendered[0] and "#Person1#: Hello." in rendered[0]
    assert rendered[0].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_prompt_hash_changes_with_the_template(tokenizer):
    a = prompts.prompt_sha256(tokenizer, DataConfig())
    b = prompts.prompt_sha256(tokenizer, DataConfig(prompt_template="Summarize:\n{dialogue}\nSummary:"))
    assert a != b and len(a) == 64


def test_labels_mask_the_prompt_and_keep_summary_and_eos(tokenizer):
    cfg = DataConfig(max_length=512)
    enc = prompts.encode_example(
        tokenizer, cfg, "#Person1#: I'd like a coffee.\n#Person2#: Sure.", "#Person1# orders coffee."
    )
    n_prompt = enc.labels.count(-100)
    assert n_prompt > 0 and enc.labels[:n_prompt] == [-100] * n_prompt
    summary = enc.labels[n_prompt:]
    assert summary == enc.input_ids[n_prompt:]
    assert summary[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(summary[:-1]).strip() == "#Person1# orders coffee."
    assert not enc.truncated


def test_eos_is_learned_even_when_pad_equals_eos(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    enc = prompts.encode_example(tokenizer, DataConfig(), "#Person1#: Hi.", "They greet.")
    assert enc.labels[-1] == tokenizer.eos_token_id


def test_truncation_cuts_the_dialogue_never_the_summary(tokenizer):
    dialogue = "\n".join(f"#Person{1 + i % 2}#: sentence number {i} about the weather." for i in range(200))
    summary = "#Person1# and #Person2# talk about the weather for a long time."
    cfg = DataConfig(max_length=96, max_summary_tokens=64)
    enc = prompts.encode_example(tokenizer, cfg, dialogue, summary)
    assert enc.truncated and len(enc.input_ids) <= 96
    n_prompt = enc.labels.count(-100)
    assert tokenizer.decode(enc.labels[n_prompt:-1]).strip() == summary
    text = tokenizer.decode(enc.input_ids[:n_prompt], skip_special_tokens=True)
    assert text.startswith("Summarize the following conversation.") and text.rstrip().endswith("Summary:")
    assert "sentence number 0 " in text and "sentence number 199" not in text


def test_truncation_with_a_chat_template_keeps_the_framing(chat_tokenizer):
    dialogue = " ".join(["word"] * 2000)
    enc = prompts.encode_example(chat_tokenizer, DataConfig(max_length=200, max_summary_tokens=40), dialogue, "Short.")
    assert len(enc.input_ids) <= 200 and enc.truncated
    assert chat_tokenizer.decode(enc.input_ids).count("<|start_header_id|>assistant") == 1


def test_generation_prompt_equals_the_training_prefix(tokenizer):
    cfg = DataConfig()
    enc = prompts.encode_example(tokenizer, cfg, "#Person1#: Hi.", "They greet.")
    n_prompt = enc.labels.count(-100)
    assert prompts.prompt_ids_for_generation(tokenizer, cfg, "#Person1#: Hi.", 1000) == enc.input_ids[:n_prompt]
