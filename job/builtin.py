"""`builtin:tiny-llama`: a tiny Llama built from a fixed config and seed, with a byte-level BPE tokenizer shipped in
the package (covers any text in any language: unknown characters fall back to bytes). Saved to the run's
`base_model/` and then loaded through `from_pretrained` like any hub model, 4-bit included.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_MODELS = ("builtin:tiny-llama",)
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


def load_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
        padding_side="right",
        model_max_length=TINY_LLAMA["max_position_embeddings"],
        add_bos_token=True,
    )


def build(name: str, folder: Path, seed: int = 0) -> Path:
    """Write the built-in model's weights and tokenizer to `folder` (idempotent) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    tokenizer = load_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    fork = torch.random.fork_rng()
    with fork:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
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
