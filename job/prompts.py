"""Prompt rendering and training-example tokenization: one function for each, used by training, evaluation and
`predict` alike, so a prompt is built exactly one way."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from job.config import DataConfig

PLACEHOLDER = "{dialogue}"


def uses_chat_template(tokenizer, cfg: DataConfig) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if cfg.chat_template == "always" and not has:
        raise ValueError("data.chat_template=always but the tokenizer has no chat template")
    return has and cfg.chat_template != "never"


def render_prompt(tokenizer, cfg: DataConfig, dialogue: str, shots: tuple[tuple[str, str], ...] = ()) -> str:
    """The text the model sees before its summary. Chat templates get a fixed date (Llama-3.x's template prints
    today's date otherwise, so the same config would train and score on different prompts on different days).
    `shots` are (dialogue, summary) examples shown first, for the in-context baselines."""
    user = cfg.prompt_template.replace(PLACEHOLDER, dialogue)
    if not uses_chat_template(tokenizer, cfg):
        prefix = "".join(cfg.prompt_template.replace(PLACEHOLDER, d) + " " + s + "\n\n\n" for d, s in shots)
        return prefix + user
    messages = []
    if cfg.system_prompt:
        messages.append({"role": "system", "content": cfg.system_prompt})
    for d, s in shots:
        messages.append({"role": "user", "content": cfg.prompt_template.replace(PLACEHOLDER, d)})
        messages.append({"role": "assistant", "content": s})
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=True,
        date_string=cfg.template_date,
        strftime_now=lambda fmt: cfg.template_date,
    )


def prompt_sha256(tokenizer, cfg: DataConfig) -> str:
    """Fingerprint of the rendered template (with the placeholder in place of a dialogue)."""
    return hashlib.sha256(render_prompt(tokenizer, cfg, PLACEHOLDER).encode()).hexdigest()


def target_text(tokenizer, cfg: DataConfig, summary: str) -> str:
    """What follows the prompt: a space then the summary for plain prompts; the bare summary after a chat header."""
    return summary if uses_chat_template(tokenizer, cfg) else " " + summary


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode_example(tokenizer, cfg: DataConfig, dialogue: str, summary: str, encoder_decoder: bool = False) -> Encoded:
    """Token ids and labels for one training example.

    Decoder-only: prompt and summary in one sequence, prompt labels -100, the summary and EOS learned.
    Encoder-decoder: the prompt is the encoder input, the summary (with EOS) the labels.
    Over-long examples lose dialogue tokens from the end of the dialogue, never summary tokens (the summary is only
    capped at data.max_summary_tokens); the prompt's own framing is kept.
    """
    eos = tokenizer.eos_token_id
    text = summary if encoder_decoder else target_text(tokenizer, cfg, summary)
    target = tokenizer(text, add_special_tokens=False)["input_ids"]
    target = target[: cfg.max_summary_tokens - 1] + [eos]
    budget = cfg.max_length if encoder_decoder else cfg.max_length - len(target)
    prompt, truncated = fit_prompt(tokenizer, cfg, dialogue, budget)
    if encoder_decoder:
        return Encoded(input_ids=prompt, labels=target, truncated=truncated)
    return Encoded(input_ids=prompt + target, labels=[-100] * len(prompt) + target, truncated=truncated)


def fit_prompt(
    tokenizer, cfg: DataConfig, dialogue: str, budget: int, shots: tuple[tuple[str, str], ...] = ()
) -> tuple[list[int], bool]:
    """Prompt token ids within `budget`, cutting the end of the dialogue (only) when needed."""
    prompt = _prompt_ids(tokenizer, cfg, dialogue, shots)
    if len(prompt) <= budget:
        return prompt, False
    dialogue_ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    keep = max(0, len(dialogue_ids) - (len(prompt) - budget))
    while True:  # decoding and re-encoding can shift a token or two; shrink until it fits
        cut = tokenizer.decode(dialogue_ids[:keep], skip_special_tokens=True)
        prompt = _prompt_ids(tokenizer, cfg, cut, shots)
        if len(prompt) <= budget or keep == 0:
            break
        keep = max(0, keep - max(1, len(prompt) - budget))
    if len(prompt) > budget:
        raise ValueError(
            f"{budget} tokens leave no room for the prompt itself ({len(prompt)} tokens without any dialogue); "
            f"raise data.max_length"
        )
    return prompt, True


def _prompt_ids(tokenizer, cfg: DataConfig, dialogue: str, shots: tuple[tuple[str, str], ...] = ()) -> list[int]:
    text = render_prompt(tokenizer, cfg, dialogue, shots)
    # chat templates already contain the BOS token as text
    return tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer, cfg))["input_ids"]


def prompt_budget(
    cfg: DataConfig,
    encoder_decoder: bool = False,
    *,
    shots: bool = False,
    context: int | None = None,
    max_new_tokens: int = 0,
) -> int:
    """Most tokens a generation prompt may have, for the evaluation, the in-context baselines and `predict` alike.

    A zero-shot prompt gets what training gave it: on an encoder-decoder model the encoder reads the prompt alone, so
    all of data.max_length; on a decoder-only model data.max_length less the summary's room (at least 16 tokens).
    A prompt with in-context `shots` is longer than any training example by design: it gets the model's `context`
    (no limit when the context length is unknown), less the `max_new_tokens` generated after it on a decoder-only
    model; an encoder-decoder's summary is the decoder's and takes nothing from the encoder's context."""
    if shots:
        if not context:
            return 10**9
        return context if encoder_decoder else context - max_new_tokens
    return cfg.max_length if encoder_decoder else max(cfg.max_length - cfg.max_summary_tokens, 16)


def prompt_ids_for_generation(
    tokenizer, cfg: DataConfig, dialogue: str, max_prompt_tokens: int, shots: tuple[tuple[str, str], ...] = ()
) -> list[int]:
    """Prompt token ids for generation, cut on the dialogue side like training examples when too long."""
    return fit_prompt(tokenizer, cfg, dialogue, max_prompt_tokens, shots)[0]
