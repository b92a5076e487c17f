"""`builtin:tiny-llama`: a tiny Llama built from a fixed config and seed, with a byte-level BPE tokenizer shipped in
the package (covers any text in any language: unknown characters fall back to bytes). Saved to the run's
`base_model/` and then loaded through `from_pretrained` like any hub model, 4-bit included.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODELS = ("builtin:tiny-llama", "builtin:tiny-t5")
TOKENIZER_FILE = Path(__file__).parent / "builtin" / "tokenizer.json"
SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>"]

TINY_LLAMA = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    initializer_range=0.02,
)


TINY_T5 = dict(
    d_model=128,
    d_kv=32,
    d_ff=384,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",  # FLAN-T5's
    n_positions=512,  # FLAN-T5's config.json carries it: the context the in-context baselines are held to
    tie_word_embeddings=False,
)


def is_builtin(name: str) -> bool:
    return name.startswith("builtin:")


def train_tokenizer(corpus: list[str], vocab_size: int = 2048) -> None:
    """Train the shipped tokenizer on the synthetic corpus (`python -m job.builtin`); deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    TOKENIZER_FILE.write_text(tok.to_str(pretty=False), encoding="utf-8")


def load_tokenizer(encoder_decoder: bool = False):
    """The shipped tokenizer: BOS first for the decoder-only model; EOS last for the encoder-decoder one (T5's way)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
        padding_side="right",
        model_max_length=TINY_LLAMA["max_position_embeddings"],
        add_bos_token=not encoder_decoder,
        add_eos_token=encoder_decoder,
    )


def build(name: str, folder: Path, seed: int = 0) -> Path:
    """Write the built-in model's weights and tokenizer to `folder` (idempotent) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    if name == "builtin:tiny-t5":
        from transformers import T5Config, T5ForConditionalGeneration

        tokenizer = load_tokenizer(encoder_decoder=True)
        config = T5Config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            **TINY_T5,
        )
        model_cls = T5ForConditionalGeneration
    else:
        tokenizer = load_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_LLAMA,
        )
        model_cls = LlamaForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    import json

    from job.synthetic import BUILTIN_DIR

    lines = []
    for split in ("train", "validation"):
        for line in (BUILTIN_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            lines += [row["dialogue"], row["summary"]]
    lines += ["Summarize the following conversation.\n\n", "\n\nSummary:"]
    train_tokenizer(lines)
    print(f"wrote {TOKENIZER_FILE}")
