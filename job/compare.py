"""`python -m job compare RUN [RUN ...]`: one ROUGE table across finished runs, as markdown, CSV and a bar chart.

A RUN is a local run folder, `s3://bucket/prefix/<run>` or `hf://owner/repo[@revision]`; only its metrics.json is
read. Every scored variant of every run becomes a row: the fine-tuned model under its method, the base model as
`zero-shot` and each in-context baseline (`one-shot`, `few-shot`). A base or baseline result that several runs share
(same model and precision, data set, scorer, generation settings and scores) is one row naming all of them. The
run's config.yaml, when there, says whether the base was loaded in 4-bit.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import catalog, rundir, tables
from job import uri as uri_mod
from job.errors import AuthError, ConfigInputError, DataError, OutputError
from job.tables import METRIC_NAMES, METRICS

log = logging.getLogger("job.compare")

CHART_METRICS = ("rouge1", "rouge2", "rougeL")
CHART_COLORS = ("#4c72b0", "#dd8452", "#55a868")

UNTRAINED = {"base": "zero-shot", "one_shot": "one-shot", "few_shot": "few-shot"}
"""Variants that prompt the base model without training it: metrics.json key -> row label."""

MANIFEST = rundir.MANIFEST
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
"""Read when present, for one fact metrics.json lacks: whether the base model was loaded in 4-bit."""
OUTPUT_FILES = ("comparison.md", "comparison.csv", "comparison.png")

CSV_COLUMNS = (
    ["method", "variant", "runs", "model", "dataset", "trainable_params", "total_params", "trainable_percent"]
    + [f"{m}{suffix}" for m in METRICS for suffix in ("", "_low", "_high")]
    + ["train_seconds", "job_seconds", "device", "base_4bit", "price_per_hour", "cost_usd", "sources"]
)


# ----------------------------------------------------------------------------------------------
# Reading runs: local folders, S3 prefixes, Hub repos


@dataclass
class Run:
    source: str
    """The RUN argument as given."""
    metrics: dict[str, Any]
    quantized: bool | None = None
    """Whether the base model was loaded in 4-bit (from the run's config.yaml); None when unknown."""

    @property
    def info(self) -> dict[str, Any]:
        return self.metrics["run"]

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.source)


def read_run(source: str) -> Run:
    """The run's metrics.json (and config.yaml, when there) from wherever it lies; one clear error when it is not a
    finished run."""
    scheme = uri_mod.scheme_of(source)
    if scheme not in ("local", "s3", "hf"):
        raise ConfigInputError(f"{source}: a RUN is a local run folder, s3://bucket/prefix/<run> or hf://owner/repo")
    try:
        where = uri_mod.parse(source, "RUN", revision=True)
    except uri_mod.LocationError as e:
        if scheme == "local":  # `s3:bucket/run`: a slash short
            raise ConfigInputError(str(e)) from None
        where = None  # s3:// and hf:// sources get their own wording below
    if scheme == "s3":
        data, config = _read_s3(source, where)
    elif scheme == "hf":
        data, config = _read_hub(source, where)
    else:
        data, config = _read_local(where.local_path())
    return Run(source, _parse_metrics(data, source), _quantized(config, source))


def _quantized(config: bytes | None, source: str) -> bool | None:
    """Whether the run's config loads the base in 4-bit; None without a config.yaml this version can read."""
    if config is None:
        return None
    import yaml

    from job import config as config_mod

    try:
        return config_mod.build(yaml.safe_load(config) or {}).quantized
    except (yaml.YAMLError, config_mod.ConfigError, TypeError, AttributeError) as e:
        log.warning(
            "%s: cannot read %s (%s); its base precision is not shown", source, CONFIG_FILE, e.__class__.__name__
        )
        return None


def _read_local(folder: Path) -> tuple[bytes, bytes | None]:
    if not folder.is_dir():
        raise ConfigInputError(f"{folder} is not a folder; pass a finished run folder (it holds {MANIFEST})")
    if not rundir.is_complete(folder):
        if (folder / METRICS_FILE).is_file():
            raise ConfigInputError(
                f"{folder} has no {MANIFEST}: that run did not finish; resume it with the same "
                f"`python -m job train` command and output.run_name={folder.name}"
            )
        runs = sorted(p.parent.name for p in folder.glob(f"*/{MANIFEST}"))
        hint = f" (it holds the runs {', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''})" if runs else ""
        raise ConfigInputError(f"{folder} has no {MANIFEST}: it is not a finished run folder{hint}")
    path = folder / METRICS_FILE
    if not path.is_file():
        raise ConfigInputError(f"{folder} has no {METRICS_FILE}; is it a run folder written by `python -m job train`?")
    config = folder / CONFIG_FILE
    return path.read_bytes(), config.read_bytes() if config.is_file() else None


def _read_s3(uri: str, where: uri_mod.Location | None) -> tuple[bytes, bytes | None]:
    from botocore.exceptions import ClientError

    from job.destination import S3_MISSING, reading_a_run_from_s3, s3_code
    from job.publish import s3_client

    bucket, prefix = (where.bucket, where.prefix) if where else ("", "")
    if not bucket or not prefix:
        raise ConfigInputError(f"{uri}: name the run's own prefix, s3://bucket/prefix/<run name>")
    client = s3_client()
    key = f"{prefix}/{METRICS_FILE}"
    with reading_a_run_from_s3(uri, "reading a run", no_bucket=f"bucket {bucket} does not exist ({uri})"):
        try:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if s3_code(e) in S3_MISSING:
                raise ConfigInputError(
                    f"s3://{bucket}/{key} does not exist: {uri} is not a run (runs lie at s3://bucket/prefix/<run name>)"
                ) from None
            raise
        try:
            client.head_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST}")
        except ClientError as e:
            if s3_code(e) in S3_MISSING:
                raise ConfigInputError(
                    f"{uri} has no {MANIFEST}: its upload did not finish; finish it with "
                    f"`python -m job publish <local run folder> --to s3://{bucket}/{prefix.rpartition('/')[0]}`"
                ) from None
            raise
        try:
            config = client.get_object(Bucket=bucket, Key=f"{prefix}/{CONFIG_FILE}")["Body"].read()
        except ClientError as e:
            if s3_code(e) not in S3_MISSING:
                raise
            config = None
    return data, config


def _read_hub(uri: str, where: uri_mod.Location | None) -> tuple[bytes, bytes | None]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from job import secrets

    repo_id, revision = (where.repo_id, where.revision) if where else ("", "")
    if not secrets.is_hub_id(repo_id):
        raise ConfigInputError(f"{uri}: a Hub run is hf://owner/repo or hf://owner/repo@revision")
    secrets.resolve_hf_token()  # private repos (the default for published runs) need it
    try:
        path = hf_hub_download(repo_id, METRICS_FILE, revision=revision or None)
    except GatedRepoError:
        raise AuthError(f"hf://{repo_id} is gated: accept its terms on the Hub with the token's account") from None
    except RepositoryNotFoundError:
        raise ConfigInputError(
            f"hf://{repo_id} does not exist or is private to another account; check the name, or set HF_TOKEN to a "
            "token that can read it"
        ) from None
    except RevisionNotFoundError:
        raise ConfigInputError(f"hf://{repo_id} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise OutputError(
            f"cannot download {METRICS_FILE} from hf://{repo_id}: the Hub is unreachable (or HF_HUB_OFFLINE is set) "
            "and no cached copy exists"
        ) from None
    except EntryNotFoundError:
        at = f" at revision {revision}" if revision else ""
        raise ConfigInputError(
            f"hf://{repo_id}{at} has no {METRICS_FILE}: not a run published by `python -m job`"
        ) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise AuthError(f"the Hugging Face token cannot read hf://{repo_id}; set a valid HF_TOKEN") from None
        raise OutputError(f"cannot read hf://{repo_id} ({status or e.__class__.__name__})") from None
    try:
        config: bytes | None = Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision or None)).read_bytes()
    except EntryNotFoundError:
        config = None
    return Path(path).read_bytes(), config


def _parse_metrics(data: bytes, source: str) -> dict[str, Any]:
    """metrics.json, checked for what the table needs: the run block and at least one complete ROUGE block."""
    try:
        metrics = json.loads(data)
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: {METRICS_FILE} is not JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{source}: {METRICS_FILE} is not UTF-8 JSON") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("run"), dict):
        raise DataError(f"{source}: {METRICS_FILE} has no `run` block; is it a metrics.json of `python -m job train`?")
    blocks = _scored_blocks(metrics)
    broken = [key for key, block in blocks if not all(isinstance(block.get(m), (int, float)) for m in METRICS)]
    if broken:
        raise DataError(f"{source}: {METRICS_FILE} lacks {', '.join(METRICS)} in {', '.join(broken)}")
    if not blocks:
        raise DataError(f"{source}: {METRICS_FILE} holds no ROUGE result (finetuned, base or baselines)")
    return metrics


def _scored_blocks(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(variant key, ROUGE block) in table order: finetuned, base, then the in-context baselines."""
    blocks = [(key, metrics.get(key)) for key in ("finetuned", "base")]
    blocks += list((metrics.get("baselines") or {}).items())
    return [(key, block) for key, block in blocks if block]


# ----------------------------------------------------------------------------------------------
# Prices


@dataclass(frozen=True)
class Price:
    per_hour: float
    note: str
    """Where the figure comes from, for the table's footnote."""


def catalog_gpu(device: str, gpu_names: list[str]) -> str | None:
    """The catalog GPU a torch device name describes ("NVIDIA A100-SXM4-40GB" -> "A100-40GB"), or None.

    Every dash-separated part of the catalog name must be a whole word of the device name, so L4 is not L40S and
    A100-40GB is not an A100 with 80 GB."""
    words = set(device.upper().replace("-", " ").replace("_", " ").split())
    matches = [name for name in gpu_names if set(name.upper().split("-")) <= words]
    return max(matches, key=len) if matches else None


def catalog_price(device: str) -> Price | None:
    """What SageMaker bills per hour for the cheapest training instance with this GPU (job.catalog's price table);
    None for a CPU or a GPU the catalog does not know."""
    gpu = catalog_gpu(device, list(catalog.GPUS))
    if gpu is None:
        return None
    try:
        table = catalog.prices()
    except (OSError, ValueError) as e:
        log.warning("cannot read the price table %s (%s)", catalog.PRICES_FILE, e.__class__.__name__)
        return None
    offers = [(table["on_demand"][name], name) for name, inst in catalog.INSTANCES.items() if inst.gpu == gpu]
    offers = [(usd, name) for usd, name in offers if usd is not None]
    if not offers:
        return None
    usd, instance = min(offers)
    derived = ", derived from the EC2 price" if instance in table.get("derived", []) else ""
    return Price(
        usd,
        f"{gpu}: ${usd:g}/h, SageMaker on-demand training price of {instance} ({table['region']}{derived}; "
        f"prices as of {table['as_of']})",
    )


# ----------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    method: str
    """`qlora`, `lora`, `full`, `prompt_tuning` (fine-tuned) or `zero-shot`, `one-shot`, `few-shot`."""
    variant: str
    """The metrics.json key: `finetuned`, `base`, or a key of `baselines`."""
    model: str
    dataset: str
    scores: dict[str, Any]
    quantized: bool | None
    """The base model in 4-bit (True), 16/32-bit (False) or not known (None)."""
    runs: list[Run] = field(default_factory=list)
    trainable_params: int | None = None
    total_params: int | None = None
    train_seconds: float | None = None
    job_seconds: float | None = None
    device: str | None = None
    price: Price | None = None

    @property
    def trained(self) -> bool:
        return self.variant == "finetuned"

    @property
    def cost(self) -> float | None:
        if self.price is None or self.job_seconds is None:
            return None
        return self.price.per_hour * self.job_seconds / 3600

    def interval(self, metric: str) -> tuple[float, float] | None:
        pair = (self.scores.get("ci95") or {}).get(metric)
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair):
            return float(pair[0]), float(pair[1])
        return None


def _untrained_key(run: Run, variant: str, block: dict[str, Any]) -> str:
    """What makes two runs' base or baseline results one and the same: everything that moves the score, and the
    score itself. A 4-bit and a 16-bit base of the same model are different bases and stay apart."""
    generation = {
        k: v
        for k, v in (run.metrics.get("generation") or {}).items()
        if k not in ("batch_size", "summaries_per_second")
    }
    return json.dumps(
        [
            variant,
            run.info.get("model"),
            run.quantized,
            run.info.get("dataset"),
            run.metrics.get("scorer"),
            generation,
            [round(float(block[m]), 9) for m in METRICS],
        ],
        sort_keys=True,
        default=str,
    )


def build_rows(runs: list[Run], price_per_hour: float | None) -> list[Row]:
    """One row per scored variant, in run order (fine-tuned, zero-shot, in-context); shared base results merged."""
    rows: list[Row] = []
    shared: dict[str, Row] = {}
    for run in runs:
        info, train = run.info, run.metrics.get("train") or {}
        for variant, block in _scored_blocks(run.metrics):
            common = {
                "model": str(info.get("model", "")),
                "dataset": str(info.get("dataset", "")),
                "scores": block,
                "quantized": run.quantized,
            }
            if variant == "finetuned":
                device = info.get("device")
                rows.append(
                    Row(
                        method=str(info.get("method", "fine-tuned")),
                        variant=variant,
                        runs=[run],
                        trainable_params=train.get("trainable_params"),
                        total_params=train.get("total_params"),
                        train_seconds=train.get("seconds"),
                        job_seconds=info.get("seconds"),
                        device=device,
                        price=_price(device, price_per_hour),
                        **common,
                    )
                )
                continue
            key = _untrained_key(run, variant, block)
            if key in shared:
                shared[key].runs.append(run)
                continue
            label = UNTRAINED.get(variant, variant.replace("_", "-"))
            row = Row(method=label, variant=variant, runs=[run], trainable_params=0, **common)
            shared[key] = row
            rows.append(row)
    return rows


def _price(device: str | None, price_per_hour: float | None) -> Price | None:
    if price_per_hour is not None:
        return Price(price_per_hour, f"${price_per_hour:g}/h (--price-per-hour) for every run")
    return catalog_price(device) if device else None


def sort_rows(rows: list[Row], metric: str) -> list[Row]:
    """Best first by `metric`; ties keep run order."""
    return sorted(rows, key=lambda row: -float(row.scores[metric]))


# ----------------------------------------------------------------------------------------------
# Formatting: markdown, CSV


def rouge_cell(row: Row, metric: str) -> str:
    interval = row.interval(metric)
    return tables.score_cell({metric: row.scores[metric], "ci95": {metric: interval} if interval else {}}, metric)


def model_cell(row: Row) -> str:
    return f"`{row.model}`" + (" (4-bit)" if row.quantized else "")


def params_cell(row: Row) -> str:
    if row.trainable_params is None:
        return ""
    if not row.total_params:
        return f"{row.trainable_params:,}"
    return f"{row.trainable_params:,} ({100 * row.trainable_params / row.total_params:.2f}%)"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def money(usd: float | None) -> str:
    if usd is None:
        return ""
    return "<$0.01" if 0 < usd < 0.005 else f"${usd:.2f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


NOT_APPLICABLE = "—"
"""Train time and cost of a row that trains nothing (blank means unknown)."""

TABLE_HEADER = ["method", "run", "model", "trainable params"] + [METRIC_NAMES[m] for m in METRICS]
TABLE_HEADER += ["train time", "cost"]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for row in rows:
        cells = [row.method, ", ".join(run.name for run in row.runs), model_cell(row), params_cell(row)]
        cells += [rouge_cell(row, m) for m in METRICS]
        cells += [duration(row.train_seconds), money(row.cost)] if row.trained else [NOT_APPLICABLE] * 2
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def _setup(run: Run) -> str:
    """How a run's numbers were produced: data set, scorer, references; runs that differ here are not comparable."""
    scorer = run.metrics.get("scorer") or {}
    stemming = "stemming on" if scorer.get("use_stemmer") else "stemming off"
    aggregation = str(scorer.get("aggregation", "")).split(";")[0] or "aggregation not recorded"
    return (
        f"{scorer.get('n_dialogues', '?')} dialogues of `{run.info.get('dataset', '?')}` with "
        f"{scorer.get('n_references', '?')} references; {scorer.get('name', 'scorer not recorded')} "
        f"{scorer.get('version', '')}, {stemming}, {aggregation}"
    ).replace("  ", " ")


def footnotes(rows: list[Row], runs: list[Run], metric: str) -> str:
    notes = []
    setups = {run.name: _setup(run) for run in runs}
    if len(set(setups.values())) == 1:
        notes.append(
            f"ROUGE: F-measure x 100 with its 95% bootstrap interval; {next(iter(setups.values()))}. "
            f"Rows ordered by {METRIC_NAMES[metric]}."
        )
    else:
        notes.append(
            f"ROUGE: F-measure x 100 with its 95% bootstrap interval; rows ordered by {METRIC_NAMES[metric]}. "
            "**The runs were not scored the same way, so their numbers are not directly comparable:** "
            + "; ".join(f"{name}: {setup}" for name, setup in setups.items())
            + "."
        )
    if any(not row.trained for row in rows):
        notes.append(
            "zero-shot, one-shot and few-shot rows prompt the base model without training it (0 trainable "
            "parameters); a row shared by several runs is one result they all measured. Their time and cost are "
            "part of their run's."
        )
    if any(row.quantized for row in rows):
        notes.append("(4-bit): the base model was loaded in 4-bit NF4, for training and for its own scores alike.")
    notes.append(_cost_note([row for row in rows if row.trained]))
    notes.append("Runs: " + "; ".join(f"{run.name} = {run.source}" for run in runs) + ".")
    return "\n".join(f"- {note}" for note in notes)


def _cost_note(trained: list[Row]) -> str:
    text = "train time: the training loop; cost: each run's whole wall time (loading, training and every evaluation) x "
    priced = sorted({row.price.note for row in trained if row.price})
    unpriced = [row for row in trained if row.price is None]
    parts = []
    if priced:
        parts.append("the price per hour: " + "; ".join(priced) + ".")
    else:
        parts.append("a price per hour.")
    if unpriced:
        runs = ", ".join(f"{row.runs[0].name} (device `{row.device or 'not recorded'}`)" for row in unpriced)
        parts.append(f"No cost for {runs}: no price for that device in job/prices.json; pass --price-per-hour.")
    return text + " ".join(parts)


def csv_text(rows: list[Row]) -> str:
    """The table as CSV, numbers as metrics.json has them (ROUGE as fractions in [0, 1]), one row per table row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record: dict[str, Any] = {
            "method": row.method,
            "variant": row.variant,
            "runs": ";".join(run.name for run in row.runs),
            "model": row.model,
            "dataset": row.dataset,
            "trainable_params": row.trainable_params,
            "total_params": row.total_params,
            "trainable_percent": (
                round(100 * row.trainable_params / row.total_params, 6)
                if row.trainable_params is not None and row.total_params
                else None
            ),
            "train_seconds": row.train_seconds,
            "job_seconds": row.job_seconds if row.trained else None,
            "device": row.device,
            "base_4bit": None if row.quantized is None else str(row.quantized).lower(),
            "price_per_hour": row.price.per_hour if row.price and row.trained else None,
            "cost_usd": round(row.cost, 6) if row.cost is not None and row.trained else None,
            "sources": ";".join(run.source for run in row.runs),
        }
        for metric in METRICS:
            interval = row.interval(metric)
            record[metric] = row.scores[metric]
            record[f"{metric}_low"], record[f"{metric}_high"] = interval or (None, None)
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Chart


def chart_labels(rows: list[Row]) -> list[str]:
    """Unique x labels: the method; under it the model when the runs use several, and the run where still needed."""
    labels = [row.method for row in rows]
    if len({row.model for row in rows}) > 1:
        labels = [f"{label}\n{_short_model(row.model)}" for label, row in zip(labels, rows)]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [
        f"{label}\n{', '.join(run.name for run in row.runs)}" if label in repeated else label
        for label, row in zip(labels, rows)
    ]


def _short_model(name: str) -> str:
    return name.removeprefix("builtin:").rstrip("/").rsplit("/", 1)[-1]


def plot(rows: list[Row], path: Path, title_detail: str) -> None:
    """Grouped bars of ROUGE-1/2/L per row, with the 95% intervals as error bars and each value written above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = chart_labels(rows)
    n = len(rows)
    x = np.arange(n)
    width = 0.8 / len(CHART_METRICS)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * n + 1.5), 5.0), dpi=120)
    top = 0.0
    for i, (metric, color) in enumerate(zip(CHART_METRICS, CHART_COLORS)):
        values = np.array([100 * row.scores[metric] for row in rows])
        intervals = [row.interval(metric) for row in rows]
        low = np.array([100 * iv[0] if iv else v for iv, v in zip(intervals, values)])
        high = np.array([100 * iv[1] if iv else v for iv, v in zip(intervals, values)])
        errors = np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
        positions = x + (i - (len(CHART_METRICS) - 1) / 2) * width
        ax.bar(
            positions,
            values,
            width,
            yerr=errors,
            capsize=3,
            color=color,
            label=METRIC_NAMES[metric],
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for xpos, value, upper in zip(positions, values, np.maximum(values, high)):
            ax.annotate(
                f"{value:.1f}",
                (xpos, upper),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        top = max(top, float(np.max(np.maximum(values, high))))
    ax.set_ylim(0, max(10.0, top * 1.22))
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylabel("F-measure x 100")
    ax.set_title("ROUGE by variant, with 95% bootstrap intervals" + (f"\n{title_detail}" if title_detail else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(ncols=len(CHART_METRICS), loc="upper right", frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _chart_detail(runs: list[Run]) -> str:
    setups = {(run.info.get("dataset"), (run.metrics.get("scorer") or {}).get("n_dialogues")) for run in runs}
    if len(setups) != 1:
        return "runs scored on different data: see comparison.md"
    dataset, dialogues = next(iter(setups))
    return f"{dialogues} dialogues of {dataset}" if dialogues else str(dataset)


# ----------------------------------------------------------------------------------------------
# python -m job compare RUN [RUN ...]


def _price_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m job compare",
        description="One ROUGE table across finished runs: a row per fine-tuned model (by method), per base model "
        "(zero-shot) and per in-context baseline (one-shot, few-shot), with trainable parameters, ROUGE-1/2/L/Lsum and "
        "their 95% intervals, train time and a cost estimate. Prints the markdown table and writes comparison.md, "
        "comparison.csv and comparison.png into --out.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a finished run folder, s3://bucket/prefix/<run> (AWS_ENDPOINT_URL is honoured) or "
        "hf://owner/repo[@revision]",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="folder for the three files (default: here); never a complete run folder, and existing files are "
        "replaced only with --overwrite",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace comparison files already in --out")
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="rougeL",
        help="order rows by this ROUGE score, best first (default: %(default)s)",
    )
    parser.add_argument(
        "--price-per-hour",
        type=_price_arg,
        metavar="USD",
        help="price of the machine per hour for every run's cost; default: the SageMaker on-demand price of the run's "
        "GPU from job/prices.json, blank for devices it does not know",
    )
    return parser.parse_args(argv)


def read_runs(sources: list[str]) -> list[Run]:
    """Each distinct source once; the same run reached twice (a local copy and its upload) counts once."""
    runs: list[Run] = []
    seen: dict[tuple[str, str], str] = {}
    for source in dict.fromkeys(sources):
        run = read_run(source)
        identity = (run.name, str(run.info.get("started_at")))
        if identity in seen:
            log.warning("%s is the same run as %s (%s); listing it once", source, seen[identity], run.name)
            continue
        seen[identity] = source
        runs.append(run)
    return runs


def write_outputs(out: Path, table: str, notes: str, csv_data: str, rows: list[Row], runs: list[Run]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        document = "\n\n".join(
            ["# ROUGE comparison", table, notes, "![ROUGE-1, ROUGE-2 and ROUGE-L by variant](comparison.png)"]
        )
        rundir.write_atomic(out / "comparison.md", document + "\n")
        rundir.write_atomic(out / "comparison.csv", csv_data)
        plot(rows, out / "comparison.png", _chart_detail(runs))
    except OSError as e:
        raise OutputError(f"cannot write the comparison into {out}: {e.strerror or e}") from None


def published_figures(runs: list[Run]) -> str:
    """Published figures next to each run scored the same way (job.published); empty when none was."""
    from job import published, tables

    table: list[list[str]] = []
    notes: dict[str, str] = {}
    for run in runs:
        rows = published.rows(run.metrics, label_prefix=f"{run.name}: ")
        table += rows if not table else [r for r in rows[1:] if r not in table]
        notes |= {ref.name: ref.describe() for ref in published.comparable(run.metrics)}
    if not table:
        return ""
    return (
        "Published figures, next to the runs scored the same way:\n\n"
        + tables.markdown(table)
        + "\n\n"
        + "\n".join(f"- {note}" for note in notes.values())
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rundir.check_output_paths("--out", args.out, [args.out / name for name in OUTPUT_FILES], args.overwrite)
    runs = read_runs(args.runs)
    rows = sort_rows(build_rows(runs, args.price_per_hour), args.metric)
    table = markdown_table(rows)
    notes = footnotes(rows, runs, args.metric)
    if figures := published_figures(runs):
        notes += "\n\n" + figures
    write_outputs(args.out, table, notes, csv_text(rows), rows, runs)
    log.info("wrote %s into %s", ", ".join(OUTPUT_FILES), args.out.resolve())
    print(table + "\n\n" + notes)
    return 0
