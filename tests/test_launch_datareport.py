"""The data report in the launchers' --dry-run: made here (in a `python -m job data` subprocess) where the tokenizer
and the data load locally, else one line saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from job import config
from launch import cli as launch_cli
from launch import datareport, kaggle

LLAMA_3B = str(Path(config.__file__).parent / "presets" / "llama-3.2-3b-qlora.yaml")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_the_report_is_made_where_tokenizer_and_data_are_local(empty_cache):
    lines = datareport.report_lines(config.resolve("test"))
    assert lines[0] == "data report: builtin:synthetic (tokenizer of builtin:tiny-llama, plain prompt)"
    assert "references per scored dialogue: 3 (18 in all)" in lines
    assert any(line.startswith("training: 0 of 96 examples") for line in lines)


def test_an_uncached_hub_model_gets_one_line(empty_cache):
    lines = datareport.report_lines(config.resolve(LLAMA_3B))
    assert lines == [
        "data report: not made here (the tokenizer of meta-llama/Llama-3.2-3B-Instruct is not in the local Hugging "
        "Face cache); run `python -m job data` with this config where it can be"
    ]


def test_a_cached_model_is_tried_and_its_error_is_the_line(empty_cache, tmp_path):
    """A cache folder without a usable tokenizer: the subprocess runs and its one-line error is passed on."""
    (tmp_path / "hf" / "hub" / "models--someone--model").mkdir(parents=True)
    lines = datareport.report_lines(config.resolve("test", ["model.name=someone/model"]))
    assert len(lines) == 1
    assert lines[0].startswith("data report: not made here (error (config): model.name=someone/model: cannot load")


def test_sagemaker_dry_run_prints_it(empty_cache, capsys):
    argv = ["sagemaker", "--config", "test", "--instance", "ml.g5.xlarge", "--region", "eu-west-1", "--dry-run"]
    assert launch_cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "data report: builtin:synthetic (tokenizer of builtin:tiny-llama, plain prompt)" in err
    assert "nothing was sent to AWS" in err


def test_kaggle_dry_run_prints_it_for_the_local_data(empty_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-key")
    assert kaggle.main(["--config", "test", "--kernel", "someone/dialogsum-test", "--dry-run", "--folder", "k"]) == 0
    err = capsys.readouterr().err
    assert "data report: builtin:synthetic (tokenizer of builtin:tiny-llama, plain prompt)" in err
