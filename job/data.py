"""Loading dialogue-summary data from the hub, local files or folders, SageMaker channels or the built-in set,
normalised to the columns `id`, `dialogue`, `summary`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from job import runtime
from job.config import DataConfig
from job.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "eval"),
    "test": ("test", "testing"),
}


@dataclass
class EvalDialogue:
    """One unique dialogue of the scored split with every reference written for it."""

    id: str
    dialogue: str
    references: list[str]


def _builder(path: Path) -> str:
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(EXTENSIONS)}") from None


def _split_of(path: Path) -> str | None:
    stem = path.name.split(".")[0].lower()
    for split, aliases in SPLIT_ALIASES.items():
        if stem in aliases or any(stem.endswith(f"_{a}") or stem.endswith(f"-{a}") for a in aliases):
            return split
    return None


def _folder_files(folder: Path) -> dict[str, str]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in EXTENSIONS and (split := _split_of(path)):
            if split in files:
                raise DataError(f"{folder}: two files for the {split} split ({Path(files[split]).name}, {path.name})")
            files[split] = str(path)
    if not files:
        raise DataError(
            f"{folder} holds no data files named by split (train.jsonl, validation.jsonl, test.jsonl; "
            f"also .json, .csv, .parquet)"
        )
    return files


def _location(spec: str) -> str | Path:
    """The data set spec as a hub id (str) or a local path."""
    if spec == "builtin:synthetic":
        from job.synthetic import BUILTIN_DIR

        return BUILTIN_DIR
    if spec.startswith("channel:"):
        folder = runtime.channel_dir(spec.split(":", 1)[1])
        if not folder.is_dir():
            raise DataError(f"data.dataset={spec}: the SageMaker channel folder {folder} does not exist")
        return folder
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in EXTENSIONS:
        if not path.exists():
            raise DataError(f"data.dataset={spec}: no such file or folder")
        return path
    return spec


def load_splits(cfg: DataConfig, seed: int):
    """A DatasetDict with the configured splits renamed to train/validation/test and columns id/dialogue/summary."""
    import datasets

    where = _location(cfg.dataset)
    try:
        if isinstance(where, Path) and where.is_dir():
            files = _folder_files(where)
            builder = _builder(Path(next(iter(files.values()))))
            raw = datasets.load_dataset(builder, data_files=files)
        elif isinstance(where, Path):
            raw = datasets.load_dataset(_builder(where), data_files={"train": str(where)})
            raw = _split_single_file(raw["train"], seed)
        else:
            raw = datasets.load_dataset(where, revision=cfg.revision)
        return _normalise(raw, cfg)
    except DataError:
        raise
    except Exception as e:  # datasets wraps parse errors (and reads lazily, so they surface while normalising)
        raise _load_error(cfg.dataset, e) from None


def _load_error(spec: str, error: BaseException) -> DataError:
    """One line for a data set that does not load, from the innermost cause datasets wrapped."""
    while not isinstance(error, (UnicodeDecodeError, FileNotFoundError, StopIteration)):
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    if isinstance(error, UnicodeDecodeError):
        return DataError(f"data.dataset={spec}: the file is not UTF-8 text ({error.reason}); re-save it as UTF-8")
    if isinstance(error, FileNotFoundError):
        return DataError(f"data.dataset={spec}: not found ({error}); check the hub id or path")
    if isinstance(error, StopIteration):
        return DataError(f"data.dataset={spec}: the file holds no rows")
    text = str(error).split("\n")[0] or type(error).__name__
    return DataError(f"data.dataset={spec}: cannot load it: {type(error).__name__}: {text}")


def _split_single_file(ds, seed: int):
    """One file: 80/10/10 train/validation/test after a seeded shuffle."""
    import datasets

    log.info("one data file given: splitting it 80/10/10 into train/validation/test (seed %d)", seed)
    first = ds.train_test_split(test_size=0.2, seed=seed)
    rest = first["test"].train_test_split(test_size=0.5, seed=seed)
    return datasets.DatasetDict(train=first["train"], validation=rest["train"], test=rest["test"])


def _normalise(raw, cfg: DataConfig):
    import datasets

    wanted = {"train": cfg.train_split, "validation": cfg.eval_split, "test": cfg.test_split}
    out = {}
    for canonical, name in wanted.items():
        if not name:
            continue
        if name not in raw:
            if canonical == "validation":
                log.warning("no %r split in %s: training without a validation loss", name, cfg.dataset)
                continue
            raise DataError(
                f"data.dataset={cfg.dataset} has no {name!r} split (splits: {', '.join(raw)}); "
                f"set data.{'train' if canonical == 'train' else 'test'}_split"
            )
        out[canonical] = _columns(raw[name], cfg, name)
    return datasets.DatasetDict(out)


def _columns(ds, cfg: DataConfig, split: str):
    missing = [c for c in (cfg.dialogue_column, cfg.summary_column) if c not in ds.column_names]
    if missing:
        raise DataError(
            f"split {split!r} has no column {', '.join(repr(m) for m in missing)} (columns: {', '.join(ds.column_names)}); "
            f"set data.dialogue_column / data.summary_column"
        )
    id_col = cfg.id_column if cfg.id_column in ds.column_names else None

    def pick(row, idx):
        return {
            "id": str(row[id_col]) if id_col else f"{split}_{idx}",
            "dialogue": str(row[cfg.dialogue_column] or "").strip(),
            "summary": str(row[cfg.summary_column] or "").strip(),
        }

    ds = ds.map(pick, with_indices=True, remove_columns=ds.column_names, desc=f"reading {split}")
    empty = sum(1 for d, s in zip(ds["dialogue"], ds["summary"]) if not d or not s)
    if empty:
        if cfg.empty_rows == "error":
            raise DataError(
                f"split {split!r} has {empty} rows with an empty dialogue or summary; "
                f"fix the data or set data.empty_rows=drop"
            )
        ds = ds.filter(lambda r: bool(r["dialogue"]) and bool(r["summary"]))
        log.warning("split %r: dropped %d rows with an empty dialogue or summary", split, empty)
    if len(ds) == 0:
        raise DataError(f"split {split!r} of data.dataset={cfg.dataset} is empty")
    return ds


def cap(ds, n: int | None, seed: int):
    """The first n rows after a seeded shuffle (all rows when n is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def unique_dialogues(ds, limit: int | None) -> list[EvalDialogue]:
    """Group rows by dialogue text (DialogSum's test split repeats each dialogue once per reference), in order."""
    groups: dict[str, EvalDialogue] = {}
    for row in ds:
        key = row["dialogue"]
        if key not in groups:
            if limit is not None and len(groups) >= limit:
                continue
            groups[key] = EvalDialogue(id=row["id"], dialogue=key, references=[])
        groups[key].references.append(row["summary"])
    return list(groups.values())
