"""Loading dialogue-summary data from the hub, local files or folders, SageMaker channels or the built-in set,
normalised to the columns `id`, `dialogue`, `summary` (the first reference, what training learns) and `references`
(every reference written for the row: DialogSum's release has `summary1..3` on one test row, the Hub copy one row per
reference)."""

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
    """The split named by any dot-separated part of the file name before its extension (`train.jsonl`,
    `dialogsum.dev.jsonl`, `my-data.test.csv`, `dialogues_valid.parquet`), or None."""
    parts = path.name.lower().split(".")
    for part in parts[:-1] or parts:
        for split, aliases in SPLIT_ALIASES.items():
            if part in aliases or any(part.endswith(f"_{a}") or part.endswith(f"-{a}") for a in aliases):
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
    folder = runtime.channel_path(spec)
    if folder is not None:
        if not folder.is_dir():
            raise DataError(f"data.dataset={spec}: the SageMaker channel folder {folder} does not exist")
        return folder
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in EXTENSIONS:
        if not path.exists():
            raise DataError(f"data.dataset={spec}: no such file or folder")
        return path
    return spec


def load_splits(cfg: DataConfig, seed: int, dropped: dict[str, int] | None = None):
    """A DatasetDict with the configured splits renamed to train/validation/test and the columns of COLUMNS;
    `dropped` receives the number of empty rows dropped per split."""
    import datasets

    where = _location(cfg.dataset)
    try:
        if isinstance(where, Path) and where.is_dir():
            # one load per file: splits may have different columns (DialogSum's test split has summary1..3)
            files = _folder_files(where)
            raw = datasets.DatasetDict(
                {
                    split: datasets.load_dataset(_builder(Path(f)), data_files={split: f})[split]
                    for split, f in files.items()
                }
            )
        elif isinstance(where, Path) and (split := _split_of(where)):
            log.info("%s is named as the %s split: reading it as that split alone", where.name, split)
            raw = datasets.load_dataset(_builder(where), data_files={split: str(where)})
        elif isinstance(where, Path):
            raw = datasets.load_dataset(_builder(where), data_files={"train": str(where)})
            raw = _split_single_file(raw["train"], seed)
        else:
            raw = datasets.load_dataset(where, revision=cfg.revision)
        return _normalise(raw, cfg, dropped)
    except DataError:
        raise
    except Exception as e:  # datasets wraps parse errors (and reads lazily, so they surface while normalising)
        raise _load_error(cfg.dataset, e) from None


def canonical_split(name: str) -> str:
    """`dev` -> `validation`, `testing` -> `test`: the split an alias names (the name itself when none)."""
    return next((split for split, aliases in SPLIT_ALIASES.items() if name.lower() in aliases), name)


def load_split(cfg: DataConfig, split: str):
    """One split, normalised, to score predictions against: a single file read whole (whatever its name), the file
    of a folder named by that split, or the split of a hub data set."""
    import datasets

    where = _location(cfg.dataset)
    try:
        if isinstance(where, Path) and where.is_dir():
            files = _folder_files(where)
            canonical = canonical_split(split)
            if canonical not in files:
                raise DataError(
                    f"data {cfg.dataset} has no file for the {split!r} split (files for: {', '.join(files)}); "
                    f"choose one of those with --split"
                )
            path = Path(files[canonical])
            ds = datasets.load_dataset(_builder(path), data_files={canonical: str(path)})[canonical]
        elif isinstance(where, Path):
            ds = datasets.load_dataset(_builder(where), data_files={"rows": str(where)})["rows"]
        else:
            ds = datasets.load_dataset(where, revision=cfg.revision)
            if split not in ds:
                raise DataError(f"data {cfg.dataset} has no {split!r} split (splits: {', '.join(ds)}); use --split")
            ds = ds[split]
        return _columns(ds, cfg, split)
    except DataError:
        raise
    except Exception as e:
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


def _normalise(raw, cfg: DataConfig, dropped: dict[str, int] | None = None):
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
                + (_NAMED_FILE_HINT if len(raw) == 1 and Path(cfg.dataset).suffix.lower() in EXTENSIONS else "")
            )
        out[canonical] = _columns(raw[name], cfg, name, dropped)
    if "train" in out:
        out["train"] = _training_rows(out["train"], cfg)
    return datasets.DatasetDict(out)


_NAMED_FILE_HINT = (
    "; a file whose name names a split (dialogsum.test.jsonl) is that split alone: give a folder with a file per "
    "split, or a file whose name names none to split it 80/10/10"
)

COLUMNS = ("id", "dialogue", "summary", "references")
"""The normalised columns; `summary` is the first of `references`."""


def _features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features({"id": text, "dialogue": text, "summary": text, "references": datasets.Sequence(text)})


def summary_columns(columns: list[str], cfg: DataConfig, split: str) -> list[str]:
    """The reference columns of a split: data.summary_column (a name or a list), or, when that single column is
    absent, its numbered columns (`summary1`, `summary2`, ... as DialogSum's release writes its test split)."""
    wanted = [cfg.summary_column] if isinstance(cfg.summary_column, str) else list(cfg.summary_column)
    if len(wanted) == 1 and wanted[0] not in columns:
        numbered = []
        while f"{wanted[0]}{len(numbered) + 1}" in columns:
            numbered.append(f"{wanted[0]}{len(numbered) + 1}")
        if numbered:
            log.info(
                "split %r has no %r column: using %s as its %d references",
                split,
                wanted[0],
                ", ".join(numbered),
                len(numbered),
            )
            return numbered
    missing = [c for c in (cfg.dialogue_column, *wanted) if c not in columns]
    if missing:
        raise DataError(
            f"split {split!r} has no column {', '.join(repr(m) for m in missing)} (columns: {', '.join(columns)}); "
            f"set data.dialogue_column / data.summary_column"
        )
    return wanted


def id_column(columns: list[str], cfg: DataConfig) -> str | None:
    """data.id_column when the split has it, else DialogSum's `fname` when the default `id` is absent."""
    if cfg.id_column in columns:
        return cfg.id_column
    return "fname" if cfg.id_column == "id" and "fname" in columns else None


def _columns(ds, cfg: DataConfig, split: str, dropped: dict[str, int] | None = None):
    ref_cols = summary_columns(ds.column_names, cfg, split)
    id_col = id_column(ds.column_names, cfg)

    def pick(row, idx):
        refs = [text for c in ref_cols if (text := str(row[c] or "").strip())]
        return {
            "id": str(row[id_col]) if id_col else f"{split}_{idx}",
            "dialogue": str(row[cfg.dialogue_column] or "").strip(),
            "summary": refs[0] if refs else "",
            "references": refs,
        }

    ds = ds.map(pick, with_indices=True, remove_columns=ds.column_names, features=_features(), desc=f"reading {split}")
    empty = sum(1 for d, s in zip(ds["dialogue"], ds["summary"]) if not d or not s)
    if empty:
        if cfg.empty_rows == "error":
            raise DataError(
                f"split {split!r} has {empty} rows with an empty dialogue or summary; "
                f"fix the data or set data.empty_rows=drop"
            )
        ds = ds.filter(lambda r: bool(r["dialogue"]) and bool(r["summary"]))
        log.warning("split %r: dropped %d rows with an empty dialogue or summary", split, empty)
        if dropped is not None:
            dropped[canonical_split(split)] = empty
    if len(ds) == 0:
        raise DataError(f"split {split!r} of data.dataset={cfg.dataset} is empty")
    return ds


def _training_rows(ds, cfg: DataConfig):
    """The first reference of each training row (data.train_on=first), or one example per reference (all)."""
    most = max((len(r) for r in ds["references"]), default=1)
    if most <= 1:
        return ds
    if cfg.train_on == "first":
        log.info("training rows have up to %d references: training on the first (data.train_on=all: every one)", most)
        return ds

    def explode(batch):
        out: dict[str, list] = {k: [] for k in COLUMNS}
        for i, refs in enumerate(batch["references"]):
            for ref in refs:
                out["id"].append(batch["id"][i])
                out["dialogue"].append(batch["dialogue"][i])
                out["summary"].append(ref)
                out["references"].append(refs)
        return out

    exploded = ds.map(explode, batched=True, desc="one training example per reference")
    log.info("data.train_on=all: %d training examples from %d rows", len(exploded), len(ds))
    return exploded


def cap(ds, n: int | None, seed: int):
    """The first n rows after a seeded shuffle (all rows when n is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def unique_dialogues(ds, limit: int | None) -> list[EvalDialogue]:
    """Group rows by dialogue text (the Hub's DialogSum test split repeats each dialogue once per reference; the
    release writes them on one row), in order, with every reference of the group."""
    groups: dict[str, EvalDialogue] = {}
    for row in ds:
        key = row["dialogue"]
        if key not in groups:
            if limit is not None and len(groups) >= limit:
                continue
            groups[key] = EvalDialogue(id=row["id"], dialogue=key, references=[])
        groups[key].references.extend(row["references"])
    return list(groups.values())
