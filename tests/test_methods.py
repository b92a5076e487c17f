"""Every method the field compares, as a config switch of the same job: LoRA without 4-bit, full fine-tuning,
soft prompts, an encoder-decoder (T5) in 4-bit, and the in-context baselines; `predict` handles each layout."""

from __future__ import annotations

import json

import pytest

from job import config as C
from job import rundir
from tests.conftest import run_job_here

VARIANTS = {
    "lora": ["method=lora"],
    "full": ["method=full"],
    "prompt_tuning": ["method=prompt_tuning", "prompt_tuning.num_virtual_tokens=8"],
    "t5_qlora": ["model.name=builtin:tiny-t5"],
}


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    parent = tmp_path_factory.mktemp("methods")
    runs = {}
    for name, overrides in VARIANTS.items():
        proc = run_job_here(
            "train",
            "--config",
            "test",
            f"output.uri={parent}",
            f"output.run_name={name}",
            "eval.base=false",
            "train.max_steps=4",  # what these tests check is each layout, not how well it trained
            "eval.num_dialogues=4",
            *overrides,
        )
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-3000:]}"
        runs[name] = parent / name
    return runs


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_method_writes_a_complete_run(method_runs, name):
    run = method_runs[name]
    assert rundir.verify(run) == []
    m = _metrics(run)
    weights = "model" if name == "full" else "adapter"
    assert (run / weights).is_dir() and not (run / ("adapter" if name == "full" else "model")).exists()
    assert 0 <= m["finetuned"]["rougeL"] <= 1
    t = m["train"]
    assert 0 < t["trainable_params"] <= t["total_params"]
    expected_method = "qlora" if name == "t5_qlora" else name
    assert m["run"]["method"] == expected_method


def test_trainable_shares_match_each_method(method_runs):
    share = {
        name: _metrics(run)["train"]["trainable_params"] / _metrics(run)["train"]["total_params"]
        for name, run in method_runs.items()
    }
    assert share["full"] == 1.0
    assert share["prompt_tuning"] < share["lora"] < 1.0
    assert (method_runs["prompt_tuning"] / "adapter" / "adapter_config.json").is_file()
    peft = json.loads((method_runs["prompt_tuning"] / "adapter" / "adapter_config.json").read_text())
    assert peft["peft_type"] == "PROMPT_TUNING" and peft["num_virtual_tokens"] == 8


def test_t5_trains_in_4bit_as_seq2seq(method_runs):
    import bitsandbytes as bnb
    import torch

    from job import modeling

    run = method_runs["t5_qlora"]
    cfg = C.build(C.read_yaml(str(run / "config.yaml")))
    model, _ = modeling.load_for_inference(run, cfg, modeling.detect_hardware())
    assert model.config.is_encoder_decoder
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    peft = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert peft["task_type"] == "SEQ_2_SEQ_LM" and peft["base_model_name_or_path"] == "builtin:tiny-t5"
    assert _metrics(run)["generation"]["dtype"] == "float32"
    assert torch.cuda.is_available() or _metrics(run)["train"]["padding_fraction"] > 0  # length-grouped, not packed


def test_full_refuses_4bit(tmp_path):
    proc = run_job_here("train", "--config", "test", "method=full", "model.load_in_4bit=true", f"output.uri={tmp_path}")
    assert proc.returncode == 2 and "cannot train 4-bit weights" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["full", "t5_qlora", "prompt_tuning"])
def test_predict_handles_each_layout(method_runs, name, tmp_path):
    run = method_runs[name]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:2]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows))
    proc = run_job_here("predict", "--run", str(run), "--input", str(src), "--output", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(line)["summary"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert got == [r["finetuned"] for r in rows]


def test_in_context_baselines_are_scored(trained_run, tmp_path):
    proc = run_job_here(
        "train",
        "--config",
        "test",
        f"output.uri={tmp_path}",
        "output.run_name=icl",
        "eval.baselines=[one_shot, few_shot]",
        "eval.few_shot_examples=2",
        "train.max_steps=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(tmp_path / "icl")
    assert set(m["baselines"]) == {"one_shot", "few_shot"}
    for block in m["baselines"].values():
        assert {"rouge1", "rougeL", "ci95", "multi_reference"} <= set(block)
    rows = [json.loads(line) for line in (tmp_path / "icl" / "predictions.jsonl").read_text().splitlines()]
    assert all("one_shot" in r and "few_shot" in r for r in rows)


def test_shots_never_come_from_the_scored_split():
    from job import data, train
    from job.builtin import load_tokenizer

    cfg = C.resolve("test", ["eval.few_shot_examples=3"])
    splits = data.load_splits(cfg.data, cfg.train.seed)
    dialogues = data.unique_dialogues(splits["test"], 6)

    class _Model:
        class config:  # noqa: N801 - mirrors a transformers config
            max_position_embeddings = 100_000

    tok = load_tokenizer()
    few = train.in_context_prompts(cfg, tok, _Model, splits["train"], dialogues, "few_shot")
    text = tok.decode(few[0])
    test_texts = {d.dialogue for d in dialogues}
    train_texts = set(splits["train"]["dialogue"])
    shown = [t for t in train_texts if t in text]
    assert len(shown) == 3 and not any(t in text for t in test_texts - {dialogues[0].dialogue})
    again = train.in_context_prompts(cfg, tok, _Model, splits["train"], dialogues, "few_shot")
    assert again == few  # fixed seed


def test_shots_that_overflow_the_context_are_a_clear_error():
    from job import data, train
    from job.builtin import load_tokenizer
    from job.errors import ConfigInputError

    cfg = C.resolve("test")
    splits = data.load_splits(cfg.data, cfg.train.seed)

    class _Small:
        class config:  # noqa: N801
            max_position_embeddings = 64

    with pytest.raises(ConfigInputError, match="exceed the model's context"):
        train.in_context_prompts(
            cfg, load_tokenizer(), _Small, splits["train"], data.unique_dialogues(splits["test"], 2), "few_shot"
        )


def test_predict_cuts_t5_prompts_as_the_evaluation_did(tmp_path, monkeypatch):
    """An encoder-decoder's prompt may fill data.max_length (the summary is the decoder's, not the encoder's): with
    dialogues longer than data.max_length - data.max_summary_tokens, predict must cut them where the evaluation and
    training did, and so reproduce predictions.jsonl."""
    cut = ["data.max_length=64", "data.max_summary_tokens=32", "eval.num_dialogues=3", "train.max_steps=2"]
    proc = run_job_here(
        "train", "--config", "test", "model.name=builtin:tiny-t5", "eval.base=false", *cut,
        f"output.uri={tmp_path}", "output.run_name=t5-cut",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "t5-cut"
    cfg = C.build(C.read_yaml(str(run / "config.yaml")))
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows))

    from job import generation, modeling, predict, prompts

    seen = []  # a spy: the real generate runs, with the prompts predict built

    def recording_generate(model, tokenizer, ids, *args, **kwargs):
        seen.append((tokenizer, ids))
        return real_generate(model, tokenizer, ids, *args, **kwargs)

    real_generate = generation.generate
    monkeypatch.setattr(generation, "generate", recording_generate)
    out = tmp_path / "out.jsonl"
    assert predict.main(["--run", str(run), "--input", str(src), "--output", str(out)]) == 0
    assert [json.loads(line)["summary"] for line in out.read_text().splitlines()] == [r["finetuned"] for r in rows]
    ((tokenizer, ids),) = seen
    trained = [prompts.encode_example(tokenizer, cfg.data, r["dialogue"], "x", encoder_decoder=True) for r in rows]
    assert all(t.truncated for t in trained)  # every dialogue is long enough to be cut
    assert ids == [t.input_ids for t in trained]  # cut where training cut the encoder input
    assert modeling.is_encoder_decoder(str(run / "base_model"), cfg)
