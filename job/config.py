"""The job's configuration: typed dataclasses grouped by concern, loaded from a preset or YAML file,
overridden by SageMaker hyperparameters and the command line, validated all at once.

This module imports neither torch nor transformers: the launchers read the same YAML.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from job import uri as uri_mod

METHODS = ("qlora", "lora", "full", "prompt_tuning")


@dataclass(frozen=True)
class Problem:
    """One broken value rule: the message the user reads and the dotted keys the rule reads."""

    keys: tuple[str, ...]
    message: str

    def reads_any(self, keys: set[str]) -> bool:
        """Whether the rule reads one of `keys` (or a key inside one of those sections)."""
        return any(k == b or k.startswith(b + ".") for k in self.keys for b in keys)


def _rule(keys: str, message: str) -> Problem:
    return Problem(tuple(keys.split()), message)


@dataclass
class ModelConfig:
    name: str = "builtin:tiny-llama"
    """Hub id (`meta-llama/Llama-3.2-3B-Instruct`, `google/flan-t5-base`), a local folder with weights (such as a
    SageMaker input channel), or a tiny model built in-process with no download: `builtin:tiny-llama` (decoder-only)
    or `builtin:tiny-t5` (encoder-decoder)."""
    load_in_4bit: bool | None = None
    """Load the base in 4-bit NF4. None: true for qlora, false for lora and full (full fine-tuning cannot train
    4-bit weights), false for prompt_tuning."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load; pin a commit for reproducible runs."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel. `auto`: flash_attention_2 when installed on a GPU that supports it, else sdpa."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Compute dtype for 4-bit matmuls and the trainer's mixed precision. `auto`: bf16 on GPUs of compute
    capability >= 8.0, fp16 on older GPUs (T4, V100), fp32 on CPU."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit quantization data type (qlora only). NF4 is what the QLoRA paper recommends."""
    double_quant: bool = True
    """Quantize the quantization constants too (qlora only): saves ~0.4 bit per parameter."""
    upcast_non_quantized: bool = True
    """Cast the non-quantized weights (embeddings, norms, lm_head) to fp32 in
    `prepare_model_for_kbit_training`: more stable training; false saves memory on large vocabularies."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Off unless you trust the repository."""

    def problems(self) -> list[Problem]:
        return []


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank. Higher: more capacity, more memory."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] | str = "all-linear"
    """Modules that get adapters: `all-linear` or a list such as `[q_proj, v_proj]`."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train."""

    def problems(self) -> list[Problem]:
        p = []
        if self.r < 1 or self.alpha < 1:
            p.append(
                _rule("lora.r lora.alpha", f"lora.r and lora.alpha must be >= 1, got r={self.r} alpha={self.alpha}")
            )
        if not 0 <= self.dropout < 1:
            p.append(_rule("lora.dropout", f"lora.dropout must be in [0, 1), got {self.dropout}"))
        if not self.target_modules:
            p.append(
                _rule(
                    "lora.target_modules",
                    "lora.target_modules names no module; use all-linear or a list such as [q_proj, v_proj]",
                )
            )
        return p


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = 20
    """Soft-prompt length (method=prompt_tuning). More tokens: more capacity, shorter room for the dialogue."""
    init_text: str | None = "Summarize the following conversation."
    """Initialise the soft prompt from this text's embeddings (None: random)."""

    def problems(self) -> list[Problem]:
        if self.num_virtual_tokens < 1:
            n = self.num_virtual_tokens
            return [
                _rule("prompt_tuning.num_virtual_tokens", f"prompt_tuning.num_virtual_tokens must be >= 1, got {n}")
            ]
        return []


@dataclass
class DataConfig:
    dataset: str = "builtin:synthetic"
    """Hub id (`knkarthick/dialogsum`), a file (jsonl, json, csv, parquet), a folder of files split by file
    name (train.jsonl, validation.jsonl, test.jsonl), a SageMaker channel (`channel:train`), or
    `builtin:synthetic` (a small learnable set shipped with the package)."""
    revision: str | None = None
    """Hub revision of the data set."""
    dialogue_column: str = "dialogue"
    """Column with the dialogue text."""
    summary_column: str | list[str] = "summary"
    """Column with the reference summary, or a list of them (`[summary1, summary2, summary3]`), one reference each.
    When the one named column is absent, its numbered columns (`summary1`, `summary2`, ...) are used."""
    train_on: Literal["first", "all"] = "first"
    """Rows with several references: train on the first one, or on one example per reference."""
    id_column: str = "id"
    """Column with a row id (`fname`, DialogSum's release, when `id` is absent); rows without one are numbered."""
    train_split: str = "train"
    """Split used for training."""
    eval_split: str = "validation"
    """Split used for the validation loss during training (empty: no validation)."""
    test_split: str = "test"
    """Split whose dialogues are summarized and scored with ROUGE."""
    max_train_examples: int | None = None
    """Cap on training rows (first N after a seeded shuffle). None: all."""
    max_eval_examples: int | None = None
    """Cap on validation rows used for the validation loss. None: all."""
    empty_rows: Literal["drop", "error"] = "drop"
    """Rows with an empty dialogue or summary: drop them (counted in the log) or stop with an error."""
    system_prompt: str | None = None
    """System message for chat models (None: the template's own default, if any)."""
    prompt_template: str = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"
    """User message / prompt; `{dialogue}` is replaced by the dialogue."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """Use the tokenizer's chat template: `auto` when the tokenizer has one."""
    template_date: str = "26 Jul 2024"
    """Date passed to chat templates that print one (Llama-3.x), so prompts are identical every day."""
    max_length: int = 1024
    """Maximum tokens per training example (prompt + summary + EOS). Long dialogues are cut on the dialogue
    side only; the summary is never truncated."""
    max_summary_tokens: int = 256
    """Summaries longer than this (in tokens) are cut to it when building training labels."""

    def problems(self) -> list[Problem]:
        p = []
        if self.max_length < 32:
            p.append(_rule("data.max_length", f"data.max_length must be >= 32, got {self.max_length}"))
        if self.max_summary_tokens < 1 or self.max_summary_tokens >= self.max_length:
            p.append(
                _rule(
                    "data.max_summary_tokens data.max_length",
                    f"data.max_summary_tokens must be in [1, data.max_length), got {self.max_summary_tokens}",
                )
            )
        if "{dialogue}" not in self.prompt_template:
            p.append(_rule("data.prompt_template", "data.prompt_template must contain {dialogue}"))
        for key in ("max_train_examples", "max_eval_examples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                p.append(_rule(f"data.{key}", f"data.{key} must be >= 1 or null, got {getattr(self, key)}"))
        return p


@dataclass
class TrainConfig:
    epochs: float = 1.0
    """Passes over the training split."""
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides epochs when > 0)."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule (any transformers scheduler name: cosine, linear, constant, ...)."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming up the learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 0.3
    """Gradient clipping norm (0.3 is the QLoRA paper's value)."""
    batch_size: int = 4
    """Examples per device per micro-batch."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimizer step; effective batch = batch_size x accumulation x devices."""
    optimizer: str = "auto"
    """Optimizer name from transformers. `auto`: paged_adamw_8bit for 4-bit runs on a GPU, adamw_torch under FSDP
    and otherwise."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: much less memory, ~30% slower."""
    packing: Literal["auto", "padding_free", "group_by_length", "none"] = "auto"
    """How batches avoid padding. `auto`: padding-free packing (no padding at all) for decoder-only models with
    flash attention, or with SDPA where it was measured faster than group-by-length
    (`job.training.PADDING_FREE_ON_SDPA`: no device so far), length-grouped batches otherwise."""
    logging_steps: int = 10
    """Optimizer steps between `metrics:` log lines."""
    eval_steps: int | None = None
    """Optimizer steps between validation-loss evaluations (None: a quarter of the run's total steps)."""
    save_steps: int | None = None
    """Optimizer steps between checkpoints (None: same as eval_steps)."""
    save_total_limit: int = 2
    """Newest checkpoints kept on disk."""
    best_by_eval_loss: bool = True
    """Keep the checkpoint with the lowest validation loss as the final adapter."""
    seed: int = 42
    """Seed for data order, LoRA init and evaluation bootstrap."""
    require_gpu: bool = False
    """Refuse to start without a GPU (true in the real presets)."""
    checkpoint_dir: str | None = None
    """Where checkpoints go. None: /opt/ml/checkpoints on SageMaker, /kaggle/working/checkpoints on Kaggle,
    <run folder>/checkpoints elsewhere."""
    fsdp: bool = False
    """Under torchrun, shard the model across GPUs with FSDP (for a model that does not fit one GPU) instead of DDP
    (a full copy per GPU). QLoRA with FSDP needs bnb_4bit_quant_storage equal to the compute dtype; the job sets it.
    Refused with more than one CUDA process until a run on several GPUs has proved it; CPU processes run DDP."""
    keep_checkpoints: bool = False
    """Keep the checkpoint folder in a finished run (by default it is removed once the adapter is saved)."""
    stall_minutes: float = 30.0
    """The watchdog: no optimizer step and no generated batch for this long while training or generating ends the
    run with exit 9 (a checkpoint first, where one can be written), so a hung collective or a stuck generation stops
    billing. 0: no watchdog. Longer than the slowest step, validation pass or generation batch."""

    def problems(self) -> list[Problem]:
        p = []
        if self.learning_rate <= 0:
            p.append(_rule("train.learning_rate", f"train.learning_rate must be > 0, got {self.learning_rate}"))
        if not 0 <= self.warmup_ratio < 1:
            p.append(_rule("train.warmup_ratio", f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}"))
        for key in ("batch_size", "gradient_accumulation_steps", "logging_steps", "save_total_limit"):
            if getattr(self, key) < 1:
                p.append(_rule(f"train.{key}", f"train.{key} must be >= 1, got {getattr(self, key)}"))
        for key in ("eval_steps", "save_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                p.append(_rule(f"train.{key}", f"train.{key} must be >= 1 or null, got {getattr(self, key)}"))
        if self.epochs <= 0 and self.max_steps <= 0:
            p.append(_rule("train.epochs train.max_steps", "set train.epochs > 0 or train.max_steps > 0"))
        if self.stall_minutes < 0:
            p.append(
                _rule(
                    "train.stall_minutes",
                    f"train.stall_minutes must be >= 0 (0: no watchdog), got {self.stall_minutes}",
                )
            )
        if self.max_grad_norm < 0:
            p.append(_rule("train.max_grad_norm", f"train.max_grad_norm must be >= 0, got {self.max_grad_norm}"))
        if self.fsdp and ("8bit" in self.optimizer or "paged" in self.optimizer):
            p.append(
                _rule(
                    "train.fsdp train.optimizer",
                    f"train.optimizer={self.optimizer} is a bitsandbytes optimizer, which does not take FSDP's sharded "
                    f"(DTensor) parameters; set train.optimizer=auto (adamw_torch under FSDP) or train.fsdp=false",
                )
            )
        return p


@dataclass
class EvalConfig:
    base: bool = True
    """Also score the base model (zero-shot) for comparison."""
    split: str | None = None
    """Split to summarize (None: data.test_split)."""
    num_dialogues: int | None = None
    """Score the first N unique dialogues of the split (None: all). DialogSum's test split has 500."""
    max_new_tokens: int = 128
    """Longest generated summary, in tokens."""
    batch_size: int = 16
    """Dialogues generated together (halved automatically on out-of-memory)."""
    bootstrap_samples: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    report_samples: int = 5
    """Examples shown side by side in report.md."""
    baselines: list[Literal["one_shot", "few_shot"]] = field(default_factory=list)
    """In-context baselines of the base model scored besides zero-shot (`base`): `one_shot`, `few_shot`. Shots are
    drawn with a fixed seed from the train split, never from the scored split."""
    few_shot_examples: int = 3
    """Shots in the few_shot baseline."""

    def problems(self) -> list[Problem]:
        p = []
        if self.few_shot_examples < 2:
            p.append(
                _rule("eval.few_shot_examples", f"eval.few_shot_examples must be >= 2, got {self.few_shot_examples}")
            )
        if self.num_dialogues is not None and self.num_dialogues < 1:
            p.append(_rule("eval.num_dialogues", f"eval.num_dialogues must be >= 1 or null, got {self.num_dialogues}"))
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.bootstrap_samples < 1:
            p.append(
                _rule(
                    "eval.max_new_tokens eval.batch_size eval.bootstrap_samples",
                    "eval.max_new_tokens, eval.batch_size and eval.bootstrap_samples must be >= 1",
                )
            )
        return p


@dataclass
class OutputConfig:
    uri: str = "./runs"
    """Parent of the run folder: a local folder, `s3://bucket/prefix` or `hf://owner/repo`. The run goes to
    <uri>/<run_name> (on the Hub: the repo root, one commit per run)."""
    run_name: str | None = None
    """Run folder name. None: the SageMaker training job name on SageMaker, else
    <UTC yyyymmdd-hhmmss>-<8-hex hash of the resolved config>."""
    local_dir: str | None = None
    """Where the complete run folder is written before an `s3://` or `hf://` upload. None: SageMaker's model
    folder on SageMaker, /kaggle/working/runs on Kaggle, ./runs elsewhere."""
    tensorboard_dir: str | None = None
    """Write the TensorBoard event files here while training, and copy them into the run's `tensorboard/` at the end.
    None: straight into the run's `tensorboard/`. On SageMaker the launcher sets it to the TensorBoardOutputConfig's
    LocalPath, which SageMaker syncs to S3 while the job runs."""
    merge: bool = False
    """Also save the base model with the adapter merged in, in 16-bit safetensors (`merged/`), and publish it."""
    private: bool = True
    """Create Hub repositories as private."""
    mlflow: str | None = None
    """Track the run in MLflow: an `http(s)://` tracking server, a `file:` or `sqlite:` store, or a SageMaker MLflow
    ARN. None: `MLFLOW_TRACKING_URI` where set, else no tracking (docs/tracking.md). Not part of the config hash."""
    mlflow_experiment: str | None = None
    """The MLflow experiment. None: `MLFLOW_EXPERIMENT_NAME` where set, else `dialogsum-qlora`."""

    @property
    def location(self) -> uri_mod.Location:
        """`uri` parsed (the config is validated first, so it parses)."""
        return uri_mod.parse(self.uri)

    def problems(self) -> list[Problem]:
        p = []
        try:
            uri_mod.parse(self.uri)
        except uri_mod.LocationError as e:
            p.append(_rule("output.uri", str(e)))
        name = self.run_name
        if name is not None and (not name or "/" in name or name in (".", "..")):
            p.append(_rule("output.run_name", f"output.run_name must be a plain folder name, got {name!r}"))
        if self.mlflow is not None and (problem := uri_mod.tracking_problem(self.mlflow)):
            p.append(_rule("output.mlflow", f"output.mlflow: {problem}"))
        return p


@dataclass
class Config:
    method: Literal["qlora", "lora", "full", "prompt_tuning"] = "qlora"
    """`qlora`: LoRA on a 4-bit NF4 base; `lora`: the same on a 16/32-bit base; `full`: every weight trains (16/32-bit,
    needs ~16 bytes of GPU memory per parameter); `prompt_tuning`: PEFT soft prompts, the model stays frozen."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def quantized(self) -> bool:
        """Whether the base model loads in 4-bit."""
        if self.model.load_in_4bit is not None:
            return self.model.load_in_4bit
        return self.method == "qlora"

    def problems(self) -> list[Problem]:
        """Every broken value rule: each section's own, then the rules that tie keys of different sections together
        (refused here, when the config is read, rather than failing after training)."""
        sections = (self.model, self.lora, self.prompt_tuning, self.data, self.train, self.eval, self.output)
        p = [problem for section in sections for problem in section.problems()]
        quant = self.model.load_in_4bit
        if self.method == "full" and quant:
            p.append(
                _rule(
                    "method model.load_in_4bit",
                    "method=full trains every weight and cannot train 4-bit weights; set model.load_in_4bit=false or "
                    "use method=qlora",
                )
            )
        if self.method == "qlora" and quant is False:
            p.append(
                _rule(
                    "method model.load_in_4bit",
                    "method=qlora is LoRA on a 4-bit base; for a 16/32-bit base use method=lora",
                )
            )
        if self.output.merge and self.method == "full":
            p.append(
                _rule(
                    "method output.merge",
                    "output.merge=true merges a LoRA adapter into the base model, but method=full trains every weight "
                    "and saves the whole model in model/ (nothing to merge); set output.merge=false",
                )
            )
        if self.output.merge and self.method == "prompt_tuning":
            p.append(
                _rule(
                    "method output.merge",
                    "output.merge=true merges a LoRA adapter into the base model, but method=prompt_tuning trains a "
                    "soft prompt, which does not merge into the weights; set output.merge=false or use method=lora",
                )
            )
        return p

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def hash(self) -> str:
        """8 hex digits identifying the resolved config, ignoring where the run is written and tracked."""
        d = self.to_dict()
        d["output"] = {k: v for k, v in d["output"].items() if k not in OUTSIDE_HASH}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def scored_split(self) -> str:
        """The split whose dialogues are summarized and scored: eval.split, else data.test_split."""
        return self.eval.split or self.data.test_split

    def weights_config(self) -> dict[str, Any]:
        """Every dotted key that shapes the trained weights, with its value: all but `WEIGHTS_NEUTRAL`."""
        flat = flatten(self.to_dict())
        return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in WEIGHTS_NEUTRAL)}

    def weights_hash(self) -> str:
        """16 hex digits identifying what shapes the trained weights, which every checkpoint records: a resume
        whose config differs there would continue training other weights."""
        return hashlib.sha256(json.dumps(self.weights_config(), sort_keys=True).encode()).hexdigest()[:16]


WEIGHTS_NEUTRAL = (
    "output",
    "eval",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.checkpoint_dir",
    "train.keep_checkpoints",
    "train.require_gpu",
)
"""Sections and keys that change where a run goes, what is scored after training, how it is logged or where its
checkpoints are kept, never the weights a step trains: a resume may change them."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys (`{"lora": {"r": 8}}` -> `{"lora.r": 8}`)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


OUTSIDE_HASH = ("uri", "run_name", "tensorboard_dir", "mlflow", "mlflow_experiment")
"""The output keys that say where a run is written and tracked: two runs differing only in them are the same run."""


class ConfigError(ValueError):
    """One or more problems with the configuration; `problems` lists each one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------------------------
# Presets and files


def presets() -> dict[str, str]:
    """Shipped preset names mapped to the first line of their header comment."""
    out = {}
    for f in sorted(resources.files("job.presets").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".yaml"):
            first = f.read_text().splitlines()[0].lstrip("# ").strip()
            out[f.name.removesuffix(".yaml")] = first
    return out


def read_yaml(name_or_path: str) -> dict[str, Any]:
    """Load a preset by name or a YAML file by path into a plain dict."""
    path = Path(name_or_path)
    if name_or_path in presets() and not path.is_file():
        text = resources.files("job.presets").joinpath(f"{name_or_path}.yaml").read_text()
        source = f"preset {name_or_path!r}"
    elif path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"cannot read config file {path}: {e}"]) from None
        source = str(path)
    else:
        raise ConfigError([f"config {name_or_path!r} is neither a file nor a preset (presets: {', '.join(presets())})"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{source} is not valid YAML: {e}".replace("\n", " ")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source} must be a mapping of keys to values, got {type(data).__name__}"])
    return data


def parse_scalar(text: str) -> Any:
    """Parse a command-line or hyperparameter value as a YAML scalar (`true`, `2`, `2e-4`, `[a, b]`).

    Text that YAML reads as a mapping (`You summarize: briefly.`) stays text; a quoted value stays a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict):
        return text
    if isinstance(value, str) and not text.strip().startswith(("'", '"')):
        try:  # YAML 1.1 reads 2e-4 as a string; users mean a number
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`a.b=1`, `--a.b 1` and `--a.b=1` into a nested dict. Raises ConfigError listing every bad token."""
    tree: dict[str, Any] = {}
    problems = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("--"):
            key = tok[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                problems.append(f"option {tok} needs a value (e.g. {tok} VALUE)")
                i += 1
                continue
        elif "=" in tok:
            key, value = tok.split("=", 1)
        else:
            problems.append(f"unexpected argument {tok!r}: overrides look like key.sub=value or --key.sub value")
            i += 1
            continue
        set_dotted(tree, key, parse_scalar(value))
        i += 1
    if problems:
        raise ConfigError(problems)
    return tree


PLATFORM_HYPERPARAMETER = re.compile(r"^(_tuning_objective_metric$|sagemaker_)")
"""Keys SageMaker itself adds (automatic model tuning's objective, `sagemaker_*` settings): not config keys."""


def hyperparameter_overrides(hps: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """SageMaker hyperparameters (string values, dotted keys) into (config name, nested overrides); the keys
    SageMaker adds itself are left out."""
    config_name = None
    tree: dict[str, Any] = {}
    for key, raw in hps.items():
        if PLATFORM_HYPERPARAMETER.match(key):
            continue
        value = parse_scalar(raw) if isinstance(raw, str) else raw
        if key == "config":
            config_name = str(value)
        else:
            set_dotted(tree, key, value)
    return config_name, tree


# ----------------------------------------------------------------------------------------------
# Building and validating the dataclasses


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is bool:
        return isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str], mistyped: set[str]) -> Any:
    """The dataclass from `data`; a key of the wrong type is reported, added to `mistyped` and left at its default."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = [k for k in fields if k.startswith(key[:3])]
            hint = f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""
            problems.append(f"unknown key {dotted!r}{hint}; known: {', '.join(prefix + k for k in fields)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{dotted} must be a mapping of {tp.__name__} keys, got {value!r}")
                mistyped.add(dotted)
                continue
            kwargs[key] = _build(tp, value, f"{dotted}.", problems, mistyped)
            continue
        if isinstance(value, int) and not isinstance(value, bool) and _type_ok(1.0, tp) and not _type_ok(1, tp):
            value = float(value)
        if not _type_ok(value, tp):
            problems.append(f"{dotted} must be {_type_name(tp)}, got {value!r}")
            mistyped.add(dotted)
            continue
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # only reached after problems were recorded for the bad keys
        problems.append(str(e))
        return cls()


def build(data: dict[str, Any]) -> Config:
    """A validated Config from a nested dict; raises ConfigError with every problem found."""
    problems: list[str] = []
    mistyped: set[str] = set()
    cfg = _build(Config, data, "", problems, mistyped)
    # A mistyped key stands at its default while it is reported; rules reading it would judge that default.
    problems += [p.message for p in cfg.problems() if not p.reads_any(mistyped)]
    if problems:
        raise ConfigError(problems)
    return cfg


def resolve(
    config: str | None,
    overrides: list[str] | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> Config:
    """Defaults < YAML (preset or file) < SageMaker hyperparameters < command-line overrides."""
    hp_config, hp_tree = hyperparameter_overrides(hyperparameters or {})
    cli_tree = parse_overrides(overrides or [])
    name = config or hp_config
    tree = read_yaml(name) if name else {}
    tree = deep_merge(tree, hp_tree)
    tree = deep_merge(tree, cli_tree)
    return build(tree)


# ----------------------------------------------------------------------------------------------
# Help text from the field docstrings


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field), read from the source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def options_help() -> str:
    """Every config key with its type, default and description."""
    lines = []
    top = Config()
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"\n{f.name}:")
            sub_hints = typing.get_type_hints(tp)
            docs = field_docs(tp)
            for sf in dataclasses.fields(tp):
                default = getattr(getattr(top, f.name), sf.name)
                lines.append(f"  {f.name}.{sf.name} ({_type_name(sub_hints[sf.name])}, default {default!r})")
                lines.append(f"      {docs.get(sf.name, '')}")
        else:
            lines.append(f"{f.name} ({_type_name(tp)}, default {getattr(top, f.name)!r})")
            lines.append(f"      {field_docs(Config).get(f.name, '')}")
    return "\n".join(lines)
