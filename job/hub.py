"""Publishing a finished run to the Hugging Face Hub: the model card and one commit per run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from job import tables
from job.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")

ROOT_FILES = ("metrics.json", "report.md", "loss.png", "config.yaml")
"""Run files committed at the repo root next to the weights (report.md shows loss.png)."""

WEIGHT_FOLDERS = ("adapter", "model")
"""The run's trained weights (rundir.weights_folder: the PEFT adapter, or the whole model of method=full), whose
files go to the repo root so that `from_pretrained(repo)` loads them."""

SUBFOLDERS = ("merged", "base_model")
"""Run subfolders committed under the same name: the merged model and, for `builtin:` models, the base weights."""

RETRY_DELAYS = (2.0, 8.0, 30.0)
"""Seconds to wait before each new attempt after a transient Hub error (429, 5xx, network)."""


DIALOGSUM_LICENSE = "CC BY-NC-SA 4.0"

BASE_LICENSES = (
    ("meta-llama/llama-3.3", "llama3.3"),
    ("meta-llama/llama-3.2", "llama3.2"),
    ("meta-llama/llama-3.1", "llama3.1"),
    ("meta-llama/meta-llama-3", "llama3"),
    ("meta-llama/llama-2", "llama2"),
)
"""Hub licence ids of model families whose licence is known without asking the Hub (prefix, lower case)."""

QUANTIZATION_NOTE = (
    "The adapter was trained with QLoRA against the base model's 4-bit (NF4) weights. The merged model adds it to "
    "the 16-bit weights instead, so it differs from the model that was trained and evaluated by the 4-bit "
    "quantization error; evaluate it before relying on the ROUGE scores above."
)


# ----------------------------------------------------------------------------------------------
# Which run files go where in the repository


def repo_files(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """(local file, path in repo) for the run files that belong on the Hub: the trained weights at the root."""
    out = []
    for local, rel in files:
        top, _, rest = rel.partition("/")
        if top in WEIGHT_FOLDERS and rest and rest != "README.md":  # our card replaces the generated one
            out.append((local, rest))
        elif rel in ROOT_FILES or (top in SUBFOLDERS and rest):
            out.append((local, rel))
    return out


# ----------------------------------------------------------------------------------------------
# Model card


def base_license(model_name: str) -> str | None:
    """The base model's licence id: known families, `apache-2.0` for the built-in model (ours), else the Hub's."""
    if model_name.startswith("builtin:"):
        return "apache-2.0"
    lowered = model_name.lower()
    for prefix, license_id in BASE_LICENSES:
        if lowered.startswith(prefix):
            return license_id
    from job.secrets import is_hub_id

    if not is_hub_id(model_name):
        return None
    try:
        from huggingface_hub import HfApi

        card = HfApi().model_info(model_name).card_data
        return card.get("license") if card else None
    except Exception as e:  # noqa: BLE001 - a card without the licence id is still a card; the text says to check
        log.warning("could not read the licence of %s from the Hub (%s)", model_name, e.__class__.__name__)
        return None


def _product(cfg: Config) -> str:
    return "model" if cfg.method == "full" else "adapter"


def _dataset_id(cfg: Config) -> str | None:
    from job.secrets import is_hub_id

    return cfg.data.dataset if is_hub_id(cfg.data.dataset) else None


def _dataset_license_text(cfg: Config) -> str:
    name = cfg.data.dataset
    if "dialogsum" in name.lower():
        return (
            f"The training data, DialogSum (`{name}`), is licensed {DIALOGSUM_LICENSE} (non-commercial, attribution, "
            "share-alike); those terms may extend to models trained on it, so check them before any commercial use."
        )
    if name.startswith("builtin:"):
        return f"The training data (`{name}`) is a small synthetic set shipped with this project (Apache-2.0)."
    return (
        f"The training data (`{name}`) carries its own licence; check it before using or sharing this {_product(cfg)}."
    )


def _base_license_text(cfg: Config, license_id: str | None) -> str:
    name = cfg.model.name
    if name.startswith("builtin:"):
        return (
            f"The base model (`{name}`) is a tiny randomly initialised test model built by this project (Apache-2.0)."
        )
    known = f" (`{license_id}`)" if license_id else ""
    family = " Llama models carry Meta's own licence and acceptable-use policy." if "llama" in name.lower() else ""
    return (
        f"The base model (`{name}`) is under its own licence{known}, which also governs this {_product(cfg)}.{family}"
    )


def _results_table(metrics: dict[str, Any]) -> str:
    return tables.caption(metrics) + ".\n\n" + tables.markdown(tables.rouge_rows(metrics, change=True))


def encoder_decoder(run_dir: Path, cfg: Config) -> bool:
    """Whether the run trained an encoder-decoder (T5) model, as its saved weights say."""
    from job.rundir import weights_folder

    folder = run_dir / weights_folder(cfg)
    try:
        if cfg.method == "full":
            return bool(json.loads((folder / "config.json").read_text()).get("is_encoder_decoder"))
        return json.loads((folder / "adapter_config.json").read_text()).get("task_type") == "SEQ_2_SEQ_LM"
    except (OSError, ValueError):
        return False


def _what(cfg: Config) -> str:
    """What the repo holds, as the card's first sentence names it."""
    if cfg.method == "full":
        return f"A model with every weight of `{cfg.model.name}` fine-tuned"
    if cfg.method == "prompt_tuning":
        return f"A prompt-tuning adapter ({cfg.prompt_tuning.num_virtual_tokens} virtual tokens) for `{cfg.model.name}`"
    return f"A {'QLoRA' if cfg.method == 'qlora' else 'LoRA'} adapter for `{cfg.model.name}`"


def _loader(cfg: Config, seq2seq: bool) -> str:
    """The class that loads the repo: a transformers Auto class for a full fine-tune, PEFT's for an adapter."""
    kind = "Seq2SeqLM" if seq2seq else "CausalLM"
    return f"AutoModelFor{kind}" if cfg.method == "full" else f"AutoPeftModelFor{kind}"


def _training_line(cfg: Config) -> str:
    if cfg.method == "full":
        trained = "method `full` (every weight trains)"
    elif cfg.method == "prompt_tuning":
        trained = f"method `prompt_tuning`, {cfg.prompt_tuning.num_virtual_tokens} virtual tokens"
    else:
        lora = cfg.lora
        trained = f"method `{cfg.method}`, LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on `{lora.target_modules}`"
    steps = f"max_steps {cfg.train.max_steps}" if cfg.train.max_steps > 0 else f"{cfg.train.epochs} epochs"
    batch = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    return f"{trained}; learning rate {cfg.train.learning_rate}, {steps}, effective batch {batch} per device, seed {cfg.train.seed}."


def _card_data(cfg: Config, metrics: dict[str, Any], repo_id: str, license_id: str | None, seq2seq: bool) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id = _dataset_id(cfg)
    split = cfg.eval.split or cfg.data.test_split
    tuned = metrics.get("finetuned") or {}
    results = [
        EvalResult(
            task_type="summarization",
            task_name="Dialogue summarization",
            dataset_type=dataset_id or cfg.data.dataset,
            dataset_name="DialogSum" if "dialogsum" in cfg.data.dataset.lower() else cfg.data.dataset,
            dataset_split=split,
            metric_type="rouge",
            metric_name=key.replace("rouge", "ROUGE-"),
            metric_config=key,
            metric_value=tuned[key],
        )
        for key in tables.METRICS
        if isinstance(tuned.get(key), (int, float))
    ]
    from job.secrets import is_hub_id

    return ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=cfg.model.name if is_hub_id(cfg.model.name) else None,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers" if cfg.method == "full" else "peft",
        license=license_id or "other",
        license_name=None if license_id else "base-model-license",  # the Hub asks for a name with `other`
        pipeline_tag="text2text-generation" if seq2seq else "text-generation",
        tags=[cfg.method, "summarization"] + (["dialogsum"] if "dialogsum" in cfg.data.dataset.lower() else []),
        eval_results=results or None,
    )


def model_card(run_dir: Path, cfg: Config, repo_id: str, merged: bool = False) -> str:
    """README.md for the repo: YAML metadata (base model, data set, licence, model-index) and what the run did."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    license_id = base_license(cfg.model.name)
    seq2seq = encoder_decoder(run_dir, cfg)
    data = _card_data(cfg, metrics, repo_id, license_id, seq2seq)
    loader = _loader(cfg, seq2seq)
    n = (metrics.get("scorer") or {}).get("n_dialogues") or cfg.eval.num_dialogues or "all"
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"{_what(cfg)} to summarize dialogues, trained on `{cfg.data.dataset}` (run `{run_dir.name}`).",
        "",
        f"## ROUGE on the `{cfg.eval.split or cfg.data.test_split}` split ({n} dialogues)",
        "",
        _results_table(metrics),
        "",
        "`report.md` has the full evaluation (lengths, baselines, examples); `metrics.json` every number; "
        "`config.yaml` the exact configuration of the run.",
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import {loader + ', ' if cfg.method == 'full' else ''}AutoTokenizer",
        *([] if cfg.method == "full" else [f"from peft import {loader}"]),
        "",
        f'model = {loader}.from_pretrained("{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        "```",
        "",
        f"Prompt: `{cfg.data.prompt_template!r}` with `{{dialogue}}` replaced by the dialogue.",
        "",
    ]
    if cfg.model.name.startswith("builtin:"):
        lines += ["The base weights of the built-in model are in `base_model/`.", ""]
    if merged:
        lines += [
            "## Merged model",
            "",
            "`merged/` holds the base model with the adapter merged in: "
            f'`AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="merged")`.',
            "",
            QUANTIZATION_NOTE,
            "",
        ]
    lines += [
        "## Training",
        "",
        _training_line(cfg),
        "",
        "## Licences",
        "",
        _base_license_text(cfg, license_id),
        "",
        _dataset_license_text(cfg),
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Upload


def _transient(error: Exception) -> bool:
    """Rate limits, server errors and dropped connections are worth another attempt; 4xx answers are not."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return status == 429 or status >= 500
    return error.__class__.__module__.split(".")[0] in ("httpx", "httpx2", "requests") or isinstance(
        error, (ConnectionError, TimeoutError)
    )


def with_retries(what: str, call: Callable[[], T]) -> T:
    """`call()`, retried with backoff on transient errors; the last error propagates."""
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            return call()
        except Exception as e:
            if delay is None or not _transient(e):
                raise
            log.warning("%s failed (%s, attempt %d); retrying in %.0f s", what, e.__class__.__name__, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def upload_run(run_dir: Path, cfg: Config, repo_id: str, files: list[tuple[Path, str]]) -> str:
    """Create the repo if needed (private unless configured otherwise) and commit the run in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    selected = repo_files(files)
    merged = any(rel.startswith("merged/") for _, rel in selected)
    card = model_card(run_dir, cfg, repo_id, merged=merged)
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(local)) for local, rel in selected]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))

    url = with_retries(
        "creating " + repo_id, lambda: api.create_repo(repo_id, private=cfg.output.private, exist_ok=True)
    )
    log.info("Hub repo %s ready (%s)", url, "private" if cfg.output.private else "public, if created now")
    info = with_retries(
        "committing to " + repo_id,
        lambda: api.create_commit(
            repo_id,
            [CommitOperationAdd(op.path_in_repo, op.path_or_fileobj) for op in operations],  # fresh ops per attempt
            commit_message=f"Run {run_dir.name}",
            commit_description=f"Weights, metrics and report of run {run_dir.name} ({len(operations)} files).",
        ),
    )
    log.info("committed %d files to %s: %s", len(operations), repo_id, info.commit_url)
    return info.commit_url
