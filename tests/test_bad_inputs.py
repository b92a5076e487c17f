"""Every bad input the job is known to meet, through the real CLI (`job.cli.main`, in a new process where the case
needs one): the one-line message, the exit code of its class, no traceback, and nothing marked complete (no manifest.json, locally or on S3).
docs/bad-inputs.md lists the same table; a test keeps the two in step.

Stand-ins: S3 is moto's server with IAM enforced, the Hub a local HTTP stand-in of its access endpoints (no local Hub
exists; both from tests/test_preflight.py). What cannot be provoked from outside in seconds (a full disk, NaN
weights, CUDA out-of-memory on a machine without CUDA, SIGTERM at an exact step) comes from DIALOGSUM_FAULTS
(job/faults.py), which raises or signals at the same place the real failure would."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from job import faults, training
from job.errors import ConfigInputError
from job.faults import ENV as FAULTS
from tests.conftest import REPO, job_env, run_job_here
from tests.release_layout import FOLDER as RELEASE
from tests.test_preflight import ALICE, BUCKET, REVOKED, S3Server, moto_with_iam, start_hub

WITHOUT_PERMISSION_OVERRIDES = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]
"""Root without the capabilities that let it read any file: file permissions apply to it like to any user."""

QUICK_TRAIN = [
    "train.max_steps=4",
    "train.logging_steps=1",
    "train.eval_steps=2",
    "train.save_steps=2",
    "data.max_train_examples=32",
    "eval.num_dialogues=1",
    "eval.base=false",
    "eval.max_new_tokens=4",
    "eval.bootstrap_samples=10",
]
"""The shortest run that still trains, checkpoints and writes results: for the faults that strike late."""


@dataclass
class Context:
    root: Path  # this case's files, and the output folder's parent
    s3: S3Server
    hub: str

    @property
    def out(self) -> Path:
        return self.root / "runs"

    def hub_env(self, token: str | None = None) -> dict[str, str]:
        return {"HF_ENDPOINT": self.hub, "HF_HUB_OFFLINE": "0", **({"HF_TOKEN": token} if token else {})}


@dataclass
class Attempt:
    overrides: list[str] = field(default_factory=list)
    config: str = "test"
    env: dict[str, str] = field(default_factory=dict)
    bound_by_permissions: bool = False  # run without root's permission to read any file
    argv: list[str] | None = None  # another command's whole command line (`score ...`) instead of `train`


@dataclass(frozen=True)
class Case:
    exit_code: int
    message: str  # a regular expression the error output must match
    build: Callable[[Context], Attempt]
    after: Callable[[Context], None] | None = None  # further checks of what was left behind


CASES: dict[str, Case] = {}


def case(name: str, exit_code: int, message: str, after: Callable[[Context], None] | None = None):
    def register(build: Callable[[Context], Attempt]) -> Callable[[Context], Attempt]:
        CASES[name] = Case(exit_code, message, build, after)
        return build

    return register


def split_folder(root: Path, test_rows: list[dict] | None = None, **raw_files: bytes) -> Path:
    """train/validation/test jsonl files with one good row each, or the given test rows or raw file bytes."""
    folder = root / "data"
    folder.mkdir()
    good = {"id": "1", "dialogue": "#Person1#: Hello.\n#Person2#: Hi.", "summary": "They greet each other."}
    for split in ("train", "validation", "test"):
        rows = test_rows if (split == "test" and test_rows is not None) else [good]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name, data in raw_files.items():
        (folder / name.replace("_", ".")).write_bytes(data)
    return folder


# ----------------------------------------------------------------------------------------------
# Configuration (exit 2)


@case("unknown key", 2, r"unknown key 'train\.learnig_rate'")
def unknown_key(ctx: Context) -> Attempt:
    return Attempt(["train.learnig_rate=1"])


@case("wrong type", 2, r"lora\.r must be int, got 'x'")
def wrong_type(ctx: Context) -> Attempt:
    return Attempt(["lora.r=x"])


@case("negative learning rate", 2, r"train\.learning_rate must be > 0, got -0\.0002")
def negative_learning_rate(ctx: Context) -> Attempt:
    return Attempt(["train.learning_rate=-2e-4"])


@case("missing config file", 2, r"config '[^']*no-such\.yaml' is neither a file nor a preset \(presets: ")
def missing_config_file(ctx: Context) -> Attempt:
    return Attempt(config=str(ctx.root / "no-such.yaml"))


@case("broken YAML", 2, r"broken\.yaml is not valid YAML: ")
def broken_yaml(ctx: Context) -> Attempt:
    path = ctx.root / "broken.yaml"
    path.write_text("train:\n  learning_rate: [2e-4\nmodel: {name\n")
    return Attempt(config=str(path))


@case("unknown URI scheme", 2, r"output\.uri 'gs://bucket/runs': unknown scheme gs://; use a local folder, s3://")
def unknown_uri_scheme(ctx: Context) -> Attempt:
    return Attempt(["output.uri=gs://bucket/runs"])


@case("S3 URI without a bucket", 2, r"output\.uri 's3:///runs' names no bucket; use s3://bucket/prefix")
def s3_uri_without_bucket(ctx: Context) -> Attempt:
    return Attempt(["output.uri=s3:///runs"])


@case("invalid S3 bucket name", 2, r"'My_Bucket' is not a valid S3 bucket name \(3-63 characters")
def invalid_bucket_name(ctx: Context) -> Attempt:
    return Attempt(["output.uri=s3://My_Bucket/runs", f"output.local_dir={ctx.out}"])


@case(
    "unknown tracking URI", 2, r"output\.mlflow: 'mlflow\.example\.com:5000' is not a tracking URI: give http\(s\)://"
)
def unknown_tracking_uri(ctx: Context) -> Attempt:
    return Attempt(["output.mlflow=mlflow.example.com:5000"])


@case("password in the tracking URI", 2, r"output\.mlflow: https://\*\*\*@mlflow\.example\.com carries a password")
def password_in_tracking_uri(ctx: Context) -> Attempt:
    return Attempt(["output.mlflow=https://me:s3cr3t-pass@mlflow.example.com"])


@case(
    "merge with method=full",
    2,
    r"output\.merge=true merges a LoRA adapter into the base model, but method=full trains every weight and saves "
    r"the whole model in model/ \(nothing to merge\); set output\.merge=false",
)
def merge_full(ctx: Context) -> Attempt:
    return Attempt(["method=full", "output.merge=true"])


@case(
    "merge with method=prompt_tuning",
    2,
    r"output\.merge=true merges a LoRA adapter into the base model, but method=prompt_tuning trains a soft prompt, "
    r"which does not merge into the weights; set output\.merge=false or use method=lora",
)
def merge_prompt_tuning(ctx: Context) -> Attempt:
    return Attempt(["method=prompt_tuning", "output.merge=true"])


@case("empty target module list", 2, r"lora\.target_modules names no module; use all-linear or a list such as")
def empty_target_modules(ctx: Context) -> Attempt:
    return Attempt(["lora.target_modules=[]"])


@case(
    "mistyped local model path",
    2,
    r"model\.name=/data/modls/llama: no such folder; fix the path \(a local model is a folder holding config\.json "
    r"and the weights\) or use a hub id such as owner/name",
)
def mistyped_model_path(ctx: Context) -> Attempt:
    return Attempt(["model.name=/data/modls/llama"])


@case(
    "model folder without config.json",
    2,
    r"model\.name=.*/weights holds no config\.json, so it is not a transformers model folder; point it at the "
    r"folder that holds config\.json and the weights",
)
def model_folder_without_config(ctx: Context) -> Attempt:
    (ctx.root / "weights").mkdir()
    (ctx.root / "weights" / "model.safetensors").write_bytes(b"\0" * 64)
    return Attempt([f"model.name={ctx.root / 'weights'}"])


@case(
    "missing model channel",
    2,
    r"model\.name=channel:model: the SageMaker channel folder /opt/ml/input/data/model does not exist; give the "
    r"training job a model channel \(`python -m launch sagemaker --model-s3 URI`\) or set SM_CHANNEL_MODEL",
)
def missing_model_channel(ctx: Context) -> Attempt:
    return Attempt(["model.name=channel:model"])


@case(
    "mistyped target module",
    2,
    r"lora\.target_modules: q_prj matches no module of builtin:tiny-llama; its linear layers are named down_proj, "
    r"gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj \(or use all-linear\)",
)
def mistyped_target_module(ctx: Context) -> Attempt:
    return Attempt(["lora.target_modules=[q_prj, v_proj]"])


# ----------------------------------------------------------------------------------------------
# Where the results go, and the Hugging Face token (exit 5: output, 4: auth)


@case("missing bucket", 5, r"bucket no-such-bucket does not exist; create it or fix output\.uri")
def missing_bucket(ctx: Context) -> Attempt:
    return Attempt(["output.uri=s3://no-such-bucket/runs", f"output.local_dir={ctx.out}"], env=ctx.s3.writer)


@case(
    "S3 write not allowed", 4, rf"not allowed to write to s3://{BUCKET}/runs: the job's AWS identity needs s3:PutObject"
)
def s3_write_not_allowed(ctx: Context) -> Attempt:
    return Attempt([f"output.uri=s3://{BUCKET}/runs", f"output.local_dir={ctx.out}"], env=ctx.s3.reader)


@case("no AWS credentials", 4, rf"no AWS credentials to write s3://{BUCKET}/runs: run with an IAM role")
def no_aws_credentials(ctx: Context) -> Attempt:
    nowhere = str(ctx.root / "no-aws-files")
    env = {
        "AWS_ENDPOINT_URL": ctx.s3.url,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "AWS_CONFIG_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return Attempt([f"output.uri=s3://{BUCKET}/runs", f"output.local_dir={ctx.out}"], env=env)


@case(
    "gated model without a token", 4, r"meta-llama/Llama-3\.2-3B-Instruct is gated and no Hugging Face token was found"
)
def gated_model_without_token(ctx: Context) -> Attempt:
    return Attempt(["model.name=meta-llama/Llama-3.2-3B-Instruct"], env=ctx.hub_env())


@case(
    "revoked token", 4, r"the Hugging Face token was refused by http://127\.0\.0\.1:\d+ \(invalid, expired or revoked\)"
)
def revoked_token(ctx: Context) -> Attempt:
    return Attempt(["model.name=someone/public"], env=ctx.hub_env(REVOKED))


@case(
    "unknown model id", 4, r"model 'nobody/no-such-model' was not found on http://127\.0\.0\.1:\d+ \(check the spelling"
)
def unknown_model_id(ctx: Context) -> Attempt:
    return Attempt(["model.name=nobody/no-such-model"], env=ctx.hub_env())


@case("Hub repo not writable", 4, r"the Hugging Face token may not write to hf://other/locked")
def hub_repo_not_writable(ctx: Context) -> Attempt:
    return Attempt(["output.uri=hf://other/locked", f"output.local_dir={ctx.out}"], env=ctx.hub_env(ALICE))


def _manifest_unchanged(ctx):
    assert (ctx.out / "bad" / "manifest.json").read_text() == '{"files": []}'


@case(
    "run name already complete",
    5,
    r"run folder .*/runs/bad is complete \(it holds manifest\.json\)",
    _manifest_unchanged,
)
def run_name_already_complete(ctx: Context) -> Attempt:
    (ctx.out / "bad").mkdir(parents=True)
    (ctx.out / "bad" / "manifest.json").write_text('{"files": []}')
    return Attempt()


@case("output folder not writable", 5, r"cannot write the run folder .*/a-file/runs/bad: Not a directory")
def output_folder_not_writable(ctx: Context) -> Attempt:
    (ctx.root / "a-file").write_text("in the way")
    return Attempt([f"output.uri={ctx.root / 'a-file' / 'runs'}"])


# ----------------------------------------------------------------------------------------------
# Data (exit 3)


@case("missing data file", 3, r"data\.dataset=.*/no-such\.jsonl: no such file or folder")
def missing_data_file(ctx: Context) -> Attempt:
    return Attempt([f"data.dataset={ctx.root / 'no-such.jsonl'}"])


@case("unsupported file type", 3, r"dialogues\.txt: unsupported file type '\.txt'; use one of \.jsonl, \.json, \.csv")
def unsupported_file_type(ctx: Context) -> Attempt:
    (ctx.root / "dialogues.txt").write_text("#Person1#: Hi.\n")
    return Attempt([f"data.dataset={ctx.root / 'dialogues.txt'}"])


@case("missing column", 3, r"split 'train' has no column 'text' \(columns: id, dialogue, summary")
def missing_column(ctx: Context) -> Attempt:
    return Attempt(["data.dialogue_column=text"])


@case("empty split", 3, r"data/test\.jsonl is empty; put the split's rows in it")
def empty_split(ctx: Context) -> Attempt:
    return Attempt([f"data.dataset={split_folder(ctx.root, test_rows=[])}"])


@case("CSV with a header and no rows", 3, r"data\.csv holds a header but no rows")
def csv_header_only(ctx: Context) -> Attempt:
    (ctx.root / "data.csv").write_text("id,dialogue,summary\n")
    return Attempt([f"data.dataset={ctx.root / 'data.csv'}"])


EMPTY_ROWS = [
    {"id": "1", "dialogue": "#Person1#: Hi.", "summary": ""},
    {"id": "2", "dialogue": "   ", "summary": "Nothing was said."},
    {"id": "3", "dialogue": "", "summary": ""},
]


@case(
    "empty rows (error)",
    3,
    r"split 'test' has 3 rows with an empty dialogue or summary; fix the data or set data\.empty_rows=drop",
)
def empty_rows_error(ctx: Context) -> Attempt:
    return Attempt([f"data.dataset={split_folder(ctx.root, test_rows=EMPTY_ROWS)}", "data.empty_rows=error"])


@case(
    "empty rows (drop) leave an empty split",
    3,
    r"(?s)split 'test': dropped 3 rows with an empty dialogue.*split 'test' of data\.dataset=.* is empty",
)
def empty_rows_dropped(ctx: Context) -> Attempt:
    return Attempt([f"data.dataset={split_folder(ctx.root, test_rows=EMPTY_ROWS)}"])


@case("non-UTF-8 text", 3, r"dialogues\.csv is not UTF-8 text \(byte 0xe9 at offset 25\); re-save it as UTF-8")
def non_utf8_text(ctx: Context) -> Attempt:
    text = "id,dialogue,summary\n1,Caf\xe9 au lait?,They order coffee.\n"
    (ctx.root / "dialogues.csv").write_bytes(text.encode("cp1252"))
    return Attempt([f"data.dataset={ctx.root / 'dialogues.csv'}"])


@case("unreadable file", 3, r"cannot read .*/data/train\.jsonl: Permission denied; make it readable by the user")
def unreadable_file(ctx: Context) -> Attempt:
    folder = split_folder(ctx.root)
    (folder / "train.jsonl").chmod(0)
    return Attempt([f"data.dataset={folder}"], bound_by_permissions=True)


@case(
    "file named by a split, without a train split",
    3,
    r"data\.dataset=.*/dialogsum\.test\.jsonl has no 'train' split \(splits: test\); set data\.train_split; a file "
    r"whose name names a split \(dialogsum\.test\.jsonl\) is that split alone",
)
def file_named_by_a_split(ctx: Context) -> Attempt:
    path = ctx.root / "dialogsum.test.jsonl"
    shutil.copy(RELEASE / "dialogsum.test.jsonl", path)
    return Attempt([f"data.dataset={path}"])


@case(
    "missing reference column",
    3,
    r"split 'train' has no column 'summary1', 'summary4' \(columns: fname, dialogue, summary, topic\); "
    r"set data\.dialogue_column / data\.summary_column",
)
def missing_reference_column(ctx: Context) -> Attempt:
    return Attempt([f"data.dataset={RELEASE}", "data.summary_column=[summary1, summary4]"])


# ----------------------------------------------------------------------------------------------
# `job score` (exit 2, 3, 5) and `job data`


def score_argv(ctx: Context, lines: list[str], *extra: str, name: str = "preds.txt") -> list[str]:
    preds = ctx.root / name
    preds.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return ["score", "--predictions", str(preds), *extra]


@case(
    "score: prediction count mismatch",
    3,
    r"--predictions .*/preds\.txt has 2 lines but split 'test' of .*/dialogsum\.test\.jsonl has 8 dialogues; give "
    r"one summary a line, in the split's order",
)
def score_count_mismatch(ctx: Context) -> Attempt:
    return Attempt(argv=score_argv(ctx, ["a", "b"], "--data", str(RELEASE / "dialogsum.test.jsonl")))


@case(
    "score: unknown id", 3, r"--predictions .*/preds\.jsonl: unknown id 'test_99': split 'test' of .* has no row with"
)
def score_unknown_id(ctx: Context) -> Attempt:
    lines = [json.dumps({"id": "test_99", "summary": "x"})]
    return Attempt(argv=score_argv(ctx, lines, "--data", str(RELEASE), name="preds.jsonl"))


@case("score: no references", 2, r"--predictions .*/preds\.txt holds no references: give --data, the data set it")
def score_without_references(ctx: Context) -> Attempt:
    return Attempt(argv=score_argv(ctx, ["a summary"]))


@case("score: no predictions file", 3, r"--predictions .*/none\.txt: no such file")
def score_missing_predictions(ctx: Context) -> Attempt:
    return Attempt(argv=["score", "--predictions", str(ctx.root / "none.txt"), "--data", str(RELEASE)])


@case(
    "score: output inside a complete run",
    5,
    r"--output .*/runs/done/metrics\.json is inside the complete run folder .*/runs/done \(it holds manifest\.json\)",
    after=lambda ctx: _unchanged(ctx.out / "done" / "metrics.json", "{}"),
)
def score_into_a_complete_run(ctx: Context) -> Attempt:
    run = ctx.out / "done"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "manifest.json").write_text("{}")
    out = str(run / "metrics.json")
    return Attempt(argv=score_argv(ctx, ["a"], "--data", str(RELEASE), "--output", out, "--overwrite"))


@case(
    "score: output file exists",
    5,
    r"--output .*/scores\.json exists and is kept; choose another file or add --overwrite",
    after=lambda ctx: _unchanged(ctx.root / "scores.json", "mine"),
)
def score_over_a_file(ctx: Context) -> Attempt:
    (ctx.root / "scores.json").write_text("mine")
    return Attempt(argv=score_argv(ctx, ["a"], "--data", str(RELEASE), "--output", str(ctx.root / "scores.json")))


@case(
    "data: no train split",
    3,
    r"data\.dataset=.*/dev-only has no 'train' split \(splits: validation\); set data\.train_split",
)
def data_report_without_train(ctx: Context) -> Attempt:
    folder = ctx.root / "dev-only"
    folder.mkdir()
    shutil.copy(RELEASE / "dialogsum.dev.jsonl", folder)
    return Attempt(argv=["data", "--config", "test", f"data.dataset={folder}"])


@case(
    "data: tokenizer not loadable",
    2,
    r"model\.name=.*/no-tokenizer: cannot load its tokenizer here \(\w+: .*\); check model\.name, and the network",
)
def data_report_without_tokenizer(ctx: Context) -> Attempt:
    (ctx.root / "no-tokenizer").mkdir()
    return Attempt(argv=["data", "--config", "test", f"model.name={ctx.root / 'no-tokenizer'}"])


def _unchanged(path: Path, text: str) -> None:
    assert path.read_text() == text


# ----------------------------------------------------------------------------------------------
# Resources (exit 6), training (exit 7), interruption (exit 143)


@case("GPU required, none visible", 6, r"no CUDA GPU is visible and train\.require_gpu is true")
def gpu_required(ctx: Context) -> Attempt:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    return Attempt(["train.require_gpu=true"])


@case(
    "not enough disk space",
    6,
    r"not enough disk space on /\S* \([0-9.]+ GB free\): .*the run folder with the merged model in .*/runs/bad ~\d",
)
def not_enough_disk(ctx: Context) -> Attempt:
    model = ctx.root / "huge-model"
    model.mkdir()
    shape = {"hidden_size": 16384, "num_hidden_layers": 100000, "intermediate_size": 53248}
    shape |= {"num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256}
    (model / "config.json").write_text(json.dumps(shape))
    return Attempt([f"model.name={model}", "output.merge=true"])


@case(
    "disk full",
    6,
    r"the disk is full while writing .*/runs/bad/predictions\.jsonl \([0-9.]+ GB free there now\); free space there",
)
def disk_full(ctx: Context) -> Attempt:
    return Attempt(QUICK_TRAIN, env={FAULTS: "disk_full"})


def _newest_checkpoint_kept(ctx):
    assert [p.name for p in training.complete_checkpoints(ctx.out / "bad" / "checkpoints")][:1] == ["checkpoint-2"]


@case(
    "out of memory while training",
    6,
    r"ran out of memory while training; lower train\.batch_size \(now 8, raise train\.gradient_accumulation_steps.*The newest checkpoint in .*/checkpoints is kept",
    _newest_checkpoint_kept,
)
def out_of_memory_training(ctx: Context) -> Attempt:
    return Attempt(QUICK_TRAIN, env={FAULTS: "oom@3"})


@case(
    "out of memory loading the model",
    6,
    r"the GPU ran out of memory outside training \(loading the model or generating summaries\); lower eval\.batch_size",
)
def out_of_memory_loading(ctx: Context) -> Attempt:
    return Attempt(QUICK_TRAIN, env={FAULTS: "oom_load"})


@case(
    "NaN loss",
    7,
    r"the training loss became nan at step 3; lower train\.learning_rate \(now 0\.003\) or use fp32 compute",
)
def nan_loss(ctx: Context) -> Attempt:
    return Attempt(QUICK_TRAIN, env={FAULTS: "nan_loss@2"})


def _sigterm_checkpoint(ctx):
    assert training.complete_checkpoints(ctx.out / "bad" / "checkpoints")[0].name == "checkpoint-1"


@case(
    "SIGTERM",
    143,
    r"stopped by SIGTERM at step 1; checkpoint saved in .*/checkpoints; run the same command again \(same output\.run_name=bad\) to resume",
    _sigterm_checkpoint,
)
def sigterm(ctx: Context) -> Attempt:
    return Attempt(QUICK_TRAIN, env={FAULTS: "sigterm@1"})


@case(
    "generation stalled",
    9,
    r"error \(stalled\): no generated batch for 0\.02 minutes while generating base model summaries \(last progress: "
    r"none yet, \d+ s ago\), so the run was ended to stop billing; nothing to checkpoint outside training\. A hung "
    r"collective \(NCCL\) or a GPU call that never returns looks like this: run the same command again \(same "
    r"output\.run_name=bad\) to resume, or raise train\.stall_minutes \(now 0\.02\)",
)
def generation_stalled(ctx: Context) -> Attempt:
    """The watch starts where the base model's first batch does, which never returns: 1.2 s is no race."""
    return Attempt([*QUICK_TRAIN, "eval.base=true", "train.stall_minutes=0.02"], env={FAULTS: "stall_generate"})


# ----------------------------------------------------------------------------------------------
# The injection itself


def test_faults_fire_only_at_their_point_and_step(monkeypatch, tmp_path):
    monkeypatch.setenv(FAULTS, "sigterm@3, disk_full")
    assert faults.armed("sigterm", 3) and not faults.armed("sigterm", 2) and faults.armed("disk_full")
    assert not faults.armed("oom")
    faults.inject("train_step", step=2, model=None, control=None)  # sigterm is for step 3
    faults.inject("load_model", cfg=None)  # nothing listed fires there
    with pytest.raises(OSError) as e:
        faults.inject("write_results", run_dir=tmp_path)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "predictions.jsonl")


def test_slow_step_sleeps_every_step(monkeypatch):
    monkeypatch.setenv(FAULTS, "slow_step")
    monkeypatch.setenv(faults.SLOW_STEP_ENV, "0.2")
    started = time.perf_counter()
    faults.inject("train_step", step=1, model=None, control=None)
    faults.inject("train_step", step=2, model=None, control=None)
    assert time.perf_counter() - started >= 0.4


@pytest.mark.parametrize("spec", ["nan@2", "nan_loss@x", "sigkill@"])
def test_a_misspelt_fault_is_refused(monkeypatch, spec):
    """A test whose fault never fires would pass for the wrong reason."""
    monkeypatch.setenv(FAULTS, spec)
    with pytest.raises(ConfigInputError, match=f"DIALOGSUM_FAULTS: cannot read '{spec}'; use fault\\[@step\\]"):
        faults.inject("train_step", step=1, model=None, control=None)


def test_no_faults_listed_means_no_work(monkeypatch):
    monkeypatch.delenv(FAULTS, raising=False)
    faults.inject("write_results")  # no context needed: nothing is looked at


# ----------------------------------------------------------------------------------------------
# Running the cases


@pytest.fixture(scope="module")
def hub_url() -> Iterator[str]:
    server, url = start_hub()
    yield url
    server.shutdown()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with moto_with_iam() as stand:
        yield stand


@pytest.fixture
def ctx(tmp_path, s3_server, hub_url) -> Context:
    return Context(tmp_path, s3_server, hub_url)


def fresh_process_needed(attempt: Attempt) -> str | None:
    """Why a case must run in a new interpreter, or None when `job.cli.main` can run it in this one."""
    if attempt.bound_by_permissions:
        return "it drops root's capabilities, which only a new process can do"
    if "sigterm" in attempt.env.get(FAULTS, ""):
        return "the job signals its own process"
    if "stall" in attempt.env.get(FAULTS, ""):
        return "the watchdog ends its own process (os._exit)"
    return None


def run(ctx: Context, attempt: Attempt) -> subprocess.CompletedProcess:
    """The case through the real command line: `job.cli.main(argv)` in this process where that is the same (as TRL's
    test_cli does; it saves an interpreter start and the torch import per case), else `python -m job` in a new one."""
    home = ctx.root / "home"
    home.mkdir()
    env = job_env(HOME=str(home), HF_HOME=str(home / "hf"), **attempt.env)  # no stored Hub login, no AWS profile
    args = attempt.argv or [
        "train",
        "--config",
        attempt.config,
        f"output.uri={ctx.out}",
        "output.run_name=bad",
        *attempt.overrides,
    ]
    if fresh_process_needed(attempt) is None:
        return run_job_here(*args, env=env)
    prefix = []
    if attempt.bound_by_permissions and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root reads any file, and setpriv (util-linux) is not here to take that away")
        prefix = WITHOUT_PERMISSION_OVERRIDES
    return subprocess.run(
        [*prefix, sys.executable, "-m", "job", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )


def manifests(ctx: Context) -> list[str]:
    return sorted(str(p.relative_to(ctx.root)) for p in ctx.root.rglob("manifest.json"))


def s3_keys(ctx: Context) -> list[str]:
    return [o["Key"] for o in ctx.s3.client(ctx.s3.admin).list_objects_v2(Bucket=BUCKET).get("Contents", [])]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(ctx, name):
    bad = CASES[name]
    attempt = bad.build(ctx)
    before = manifests(ctx)
    proc = run(ctx, attempt)
    assert proc.returncode == bad.exit_code, proc.stderr[-3000:]
    assert re.search(bad.message, proc.stderr), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert manifests(ctx) == before  # nothing new marked complete
    assert s3_keys(ctx) == []  # not even a write probe is left behind
    if bad.after:
        bad.after(ctx)


def test_the_docs_list_every_case_with_its_exit_code():
    text = (REPO / "docs/bad-inputs.md").read_text().split("\n## The table\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
    assert rows == {name: c.exit_code for name, c in CASES.items()}
    assert len(rows) >= 20
