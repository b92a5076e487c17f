"""`python -m job serve` with its base model staged beside the run (`deploy|transform --model-s3`): the launcher sets
BASE_MODEL_DIR to where SageMaker mounts the AdditionalModelDataSources channel `base`, and the server loads the
base from there, offline and with no token, instead of the Hub id the run's config names. The shared run's own
built-in base weights play the staged ones; the model is real, served in-process on a free port."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import yaml

from job import runtime, serve
from tests.conftest import REPO, job_env, run_job_here

HUB_ID = "meta-llama/Llama-3.2-3B-Instruct"
"""What the run's config names: a gated Hub model no test can download."""


@pytest.fixture(scope="module")
def hub_run(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """(run, staged): the shared run as an adapter on HUB_ID with no base_model/, and its base weights apart."""
    root = tmp_path_factory.mktemp("staged-base")
    run, staged = root / "run", root / "staged"
    shutil.copytree(trained_run.dir, run, ignore=shutil.ignore_patterns("tensorboard", "base_model", "checkpoints"))
    shutil.copytree(trained_run.dir / "base_model", staged)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"] = HUB_ID
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run, staged


def test_the_server_loads_the_base_from_base_model_dir_with_no_token(hub_run, monkeypatch) -> None:
    run, staged = hub_run
    for key in ("HF_TOKEN", "HF_TOKEN_FILE", "HF_TOKEN_SECRET_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg, _ = serve.describe(run)
    assert cfg.model.name == HUB_ID  # without BASE_MODEL_DIR: the Hub id, which cannot load here
    monkeypatch.setenv(runtime.BASE_MODEL_ENV, str(staged))
    cfg, _ = serve.describe(run)
    assert (cfg.model.name, cfg.model.revision) == (str(staged), None)
    row = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
    with serve.InThread(run) as running:
        answer = httpx.post(f"{running.url}/invocations", json={"dialogue": row["dialogue"]}, timeout=300).json()
    assert answer["summaries"][0]["summary"] == row["finetuned"]  # the run's adapter on the staged base


def test_a_base_model_dir_without_a_model_is_one_line(hub_run, tmp_path) -> None:
    run, _ = hub_run
    done = run_job_here(*["serve", "--run", str(run)], env=job_env(**{runtime.BASE_MODEL_ENV: str(tmp_path)}))
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line == (
        f"error (config): {runtime.BASE_MODEL_ENV}={tmp_path} holds no model (no config.json): the staged base model "
        "was not mounted; pass the --model-s3 URI that `python -m launch sagemaker stage-model` printed, or unset it"
    )
    docs = " ".join((REPO / "docs" / "bad-inputs.md").read_text().split())
    assert line.replace(str(tmp_path), "<folder>") in docs  # word for word
