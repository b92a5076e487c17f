"""Config: presets, precedence, overrides, SageMaker hyperparameter strings, errors listed all at once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from job import config as C
from tests.conftest import REPO, job_env


@pytest.mark.parametrize("name", sorted(C.presets()))
def test_every_preset_parses_and_has_a_launch_command(name):
    cfg = C.resolve(name)
    assert isinstance(cfg, C.Config)
    text = (REPO / "job" / "presets" / f"{name}.yaml").read_text()
    assert "python -m" in text.split("\n", 5)[1] + text.split("\n", 5)[2]


def test_real_preset_matches_the_published_recipe():
    cfg = C.resolve("llama-3.2-3b-qlora")
    assert cfg.model.name == "meta-llama/Llama-3.2-3B-Instruct"
    assert cfg.data.dataset == "knkarthick/dialogsum"
    assert (cfg.train.learning_rate, cfg.train.warmup_ratio, cfg.train.max_grad_norm) == (2e-4, 0.03, 0.3)
    assert cfg.train.batch_size * cfg.train.gradient_accumulation_steps == 16
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (16, 32, 0.05, "all-linear")
    assert cfg.train.require_gpu and cfg.train.best_by_eval_loss and cfg.data.max_length == 1024
    assert cfg.eval.num_dialogues is None  # all 500 unique test dialogues


def test_precedence_defaults_yaml_hyperparameters_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.001\n  batch_size: 2\n  seed: 7\nlora:\n  r: 4\n")
    hps = {"train.batch_size": "3", "train.seed": "9"}  # SageMaker sends strings
    cfg = C.resolve(str(path), ["train.seed=11"], hps)
    assert cfg.lora.alpha == C.LoraConfig().alpha  # default
    assert cfg.lora.r == 4 and cfg.train.learning_rate == 0.001  # YAML
    assert cfg.train.batch_size == 3  # hyperparameters over YAML
    assert cfg.train.seed == 11  # command line over hyperparameters


def test_hyperparameters_can_name_the_config():
    cfg = C.resolve(None, [], {"config": "test", "eval.base": "false"})
    assert cfg.model.name == "builtin:tiny-llama" and cfg.train.max_steps == 12 and cfg.eval.base is False


def test_keys_sagemaker_adds_are_not_config_keys():
    """Automatic model tuning adds `_tuning_objective_metric`, the SDKs `sagemaker_*` keys: the job ignores them,
    where an unknown key of ours still fails."""
    hps = {"_tuning_objective_metric": "finetuned:rougeL", "sagemaker_program": "x", "sagemaker_region": '"us-east-1"'}
    assert C.resolve("test", [], {**hps, "lora.r": "4"}).to_dict() == C.resolve("test", ["lora.r=4"]).to_dict()
    with pytest.raises(C.ConfigError, match="sagemaker"):
        C.resolve("test", [], {**hps, "sagemaker.region": "x"})


def test_hyperparameters_json_wins_over_sm_hps(tmp_path, monkeypatch):
    """SageMaker's drivers put the hyperparameters in SM_HPS JSON-decoded once more (the string "1234" arrives as
    the number 1234 there); the platform's own file keeps the strings as sent, so the job reads that first."""
    from job import runtime

    sent = {"model.revision": '"1234"', "data.system_prompt": 'You\'re "brief"'}
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(sent))
    monkeypatch.setattr(runtime, "OPT_ML", tmp_path)
    monkeypatch.setenv("SM_HPS", json.dumps({"model.revision": 1234, "data.system_prompt": "other"}))
    assert runtime.hyperparameters() == sent
    cfg = C.resolve("test", [], runtime.hyperparameters())
    assert cfg.model.revision == "1234" and cfg.data.system_prompt == 'You\'re "brief"'
    (config / "hyperparameters.json").unlink()
    assert runtime.hyperparameters() == {"model.revision": 1234, "data.system_prompt": "other"}


def test_override_forms_and_yaml_scalars():
    cfg = C.resolve(
        "test",
        [
            "train.learning_rate=2e-4",
            "--eval.base",
            "false",
            "--lora.r=32",
            "lora.target_modules=[q_proj, v_proj]",
            "data.max_train_examples=null",
        ],
    )
    assert cfg.train.learning_rate == 2e-4 and isinstance(cfg.train.learning_rate, float)
    assert cfg.eval.base is False and cfg.lora.r == 32
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.max_train_examples is None


def test_integers_are_accepted_where_floats_are_expected():
    assert C.resolve("test", ["train.epochs=2"]).train.epochs == 2.0


def test_every_problem_is_listed_at_once():
    with pytest.raises(C.ConfigError) as e:
        C.resolve("test", ["train.learnig_rate=1", "lora.r=abc", "eval.base=maybe", "model.nam=x", "bogus=1"])
    problems = e.value.problems
    assert len(problems) == 5, problems
    text = str(e.value)
    assert "unknown key 'train.learnig_rate'" in text and "did you mean train.learning_rate" in text
    assert "lora.r must be int, got 'abc'" in text
    assert "eval.base must be bool" in text and "unknown key 'bogus'" in text


def test_value_checks_are_listed_together():
    with pytest.raises(C.ConfigError) as e:
        C.resolve("test", ["train.learning_rate=-1", "lora.dropout=1.5", "output.uri=ftp://x/y"])
    assert len(e.value.problems) == 3
    assert "train.learning_rate must be > 0" in str(e.value)
    assert "unknown scheme ftp://" in str(e.value)


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(C.ConfigError, match="neither a file nor a preset"):
        C.resolve(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.resolve(str(bad))


def test_hash_ignores_where_the_run_goes():
    a = C.resolve("test", ["output.uri=/a", "output.run_name=x"])
    b = C.resolve("test", ["output.uri=s3://b/c"])
    c = C.resolve("test", ["train.seed=1"])
    assert a.hash() == b.hash() != c.hash() and len(a.hash()) == 8


def test_config_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import job.config, job.runtime, launch.cli; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=job_env(), cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_help_lists_every_key_and_the_presets():
    env = job_env()
    top = subprocess.run([sys.executable, "-m", "job"], capture_output=True, text=True, env=env, cwd=REPO)
    assert top.returncode == 0
    for name in C.presets():
        assert name in top.stdout
    assert "train" in top.stdout and "predict" in top.stdout
    train = subprocess.run(
        [sys.executable, "-m", "job", "train", "--help"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert train.returncode == 0
    for key in json.loads(json.dumps(C.Config().to_dict())):
        for sub in C.Config().to_dict()[key] if isinstance(C.Config().to_dict()[key], dict) else []:
            assert f"{key}.{sub} (" in train.stdout, f"{key}.{sub} missing from train --help"
    assert "Hub id" in train.stdout  # field docstrings are shown


@pytest.mark.parametrize(
    ("method", "why"),
    [("full", "method=full trains every weight"), ("prompt_tuning", "method=prompt_tuning trains a soft prompt")],
)
def test_merge_is_refused_for_methods_without_an_adapter_to_merge(method, why):
    with pytest.raises(C.ConfigError) as e:
        C.resolve("test", [f"method={method}", "output.merge=true"])
    (problem,) = e.value.problems
    assert problem.startswith("output.merge=true") and why in problem and "set output.merge=false" in problem


def test_value_checks_run_alongside_type_errors():
    with pytest.raises(C.ConfigError) as e:
        C.resolve("test", ["lora.r=abc", "train.learning_rate=-1", "method=full", "output.merge=true"])
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert problems[0] == "lora.r must be int, got 'abc'"
    assert any(p.startswith("train.learning_rate must be > 0") for p in problems)
    assert any(p.startswith("output.merge=true") for p in problems)


def test_a_rule_reading_a_mistyped_key_is_skipped_not_judged_on_its_default():
    # method=fulll falls back to qlora while it is reported; "qlora needs a 4-bit base" would be a false second problem
    with pytest.raises(C.ConfigError) as e:
        C.resolve("test", ["method=fulll", "model.load_in_4bit=false"])
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("method must be one of")


def test_an_empty_target_module_list_is_refused():
    with pytest.raises(C.ConfigError, match=r"lora\.target_modules names no module"):
        C.resolve("test", ["lora.target_modules=[]"])


def test_each_section_states_its_own_rules():
    assert [p.keys for p in C.TrainConfig(learning_rate=0).problems()] == [("train.learning_rate",)]
    assert C.LoraConfig().problems() == [] and C.Config().problems() == []
