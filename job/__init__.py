"""dialogsum-qlora's job: fine-tune an LLM for dialogue summarization with QLoRA and score it with ROUGE."""

__version__ = "0.1.0"
