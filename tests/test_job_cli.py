"""The real CLI end to end on the `test` preset: the run folder, manifest last, metrics.json keys, log lines,
never overwriting a complete run, and `predict` from another process."""

from __future__ import annotations

import json
import re

import yaml

from job import rundir
from tests.conftest import SCORE_KEYS, run_job, run_job_here

LAYOUT = [
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
    "adapter/tokenizer.json",
    "base_model/config.json",
    "base_model/model.safetensors",
    "base_model/tokenizer.json",
    "metrics.json",
    "predictions.jsonl",
    "report.md",
    "loss.png",
    "config.yaml",
    "manifest.json",
]


def test_run_folder_layout(trained_run):
    d = trained_run.dir
    for rel in LAYOUT:
        assert (d / rel).is_file(), rel
    assert list((d / "tensorboard").glob("events.out.tfevents.*"))
    assert not (d / "checkpoints").exists()  # removed once the adapter is saved
    assert trained_run.stdout.strip().splitlines()[-1] == str(d)  # the last line is the run folder


def test_manifest_is_last_and_lists_every_file(trained_run):
    d = trained_run.dir
    manifest = json.loads((d / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert listed == on_disk
    newest_other = max((d / p).stat().st_mtime_ns for p in listed)
    assert (d / "manifest.json").stat().st_mtime_ns >= newest_other
    assert rundir.verify(d) == []
    for lib in ("torch", "transformers", "peft", "bitsandbytes", "datasets"):
        assert manifest["versions"][lib]
    assert manifest["seed"] == 42 and manifest["started_at"] <= manifest["finished_at"]


def test_metrics_json_contract(trained_run):
    m = json.loads((trained_run.dir / "metrics.json").read_text())
    assert set(m["run"]) >= {"name", "method", "model", "dataset", "started_at", "finished_at", "seconds"}
    assert m["run"]["name"] == "shared" and m["run"]["method"] == "qlora" and m["run"]["model"] == "builtin:tiny-llama"
    s = m["scorer"]
    assert s["name"] == "rouge_score" and s["use_stemmer"] is True and s["version"]
    assert {"rougeLsum_sentence_split", "aggregation"} <= set(s)
    assert s["n_dialogues"] == 6 and s["n_references"] == 18
    g = m["generation"]
    assert (g["do_sample"], g["num_beams"], g["max_new_tokens"]) == (False, 1, 24)
    assert g["batch_size"] >= 1 and g["dtype"] == "float32" and len(g["prompt_sha256"]) == 64
    for key in ("base", "finetuned"):
        assert SCORE_KEYS <= set(m[key]), key
        for metric in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            assert 0 <= m[key][metric] <= 1
            assert 0 <= m[key]["multi_reference"][metric] <= 1
            lo, hi = m[key]["ci95"][metric]
            assert 0 <= lo <= hi <= 1
    assert m["baselines"] == {}
    t = m["train"]
    assert t["steps"] == 12 and t["loss"] > 0 and t["eval_loss"] > 0
    assert 0 < t["trainable_params"] < t["total_params"]
    assert t["tokens_per_second"] > 0 and 0 <= t["padding_fraction"] < 0.1 and t["peak_memory_mb"] > 0


def test_predictions_and_report(trained_run):
    rows = [json.loads(line) for line in (trained_run.dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert set(row) == {"id", "dialogue", "references", "base", "finetuned"}
        assert len(row["references"]) == 3 and isinstance(row["finetuned"], str)
    report = (trained_run.dir / "report.md").read_text()
    assert "| fine-tuned |" in report and "| base (zero-shot) |" in report and "![loss](loss.png)" in report
    train = json.loads((trained_run.dir / "metrics.json").read_text())["train"]
    assert f"final loss {train['loss']:.4g}, best validation loss {train['eval_loss']:.4g}," in report
    assert (trained_run.dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adapter_names_the_public_base_model(trained_run):
    cfg = json.loads((trained_run.dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "builtin:tiny-llama"
    resolved = yaml.safe_load((trained_run.dir / "config.yaml").read_text())
    assert resolved["output"]["run_name"] == "shared" and resolved["method"] == "qlora"


def test_metrics_log_lines(trained_run):
    lines = [ln for ln in trained_run.stdout.splitlines() if ln.startswith("metrics: ")]
    number = r"-?[0-9]+(\.[0-9]+)?"
    pair = re.compile(rf"^([A-Za-z0-9_]+)=({number}|nan|inf)$")
    for line in lines:
        for token in line.removeprefix("metrics: ").split():
            assert pair.match(token), f"not a plain decimal: {token!r} in {line!r}"
    steps = [ln for ln in lines if " loss=" in ln and "learning_rate=" in ln and "step=" in ln]
    assert len(steps) == 6  # logging_steps 2 over 12 steps
    assert sum("eval_loss=" in ln for ln in lines) >= 2
    final = lines[-1]
    for key in ("base", "finetuned"):
        for metric in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            assert f"{key}_{metric}=" in final


def test_a_complete_run_is_never_overwritten(trained_run):
    before = (trained_run.dir / "manifest.json").read_bytes()
    proc = run_job_here("train", "--config", "test", f"output.uri={trained_run.dir.parent}", "output.run_name=shared")
    assert proc.returncode == 5
    assert "is complete" in proc.stderr and "Traceback" not in proc.stderr
    assert (trained_run.dir / "manifest.json").read_bytes() == before
    assert rundir.verify(trained_run.dir) == []


def test_bad_config_is_one_clear_line(tmp_path):
    proc = run_job_here("train", "--config", "test", "train.learnig_rate=1", "lora.r=x", f"output.uri={tmp_path}")
    assert proc.returncode == 2
    assert "unknown key 'train.learnig_rate'" in proc.stderr and "lora.r must be int" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


def test_predict_from_another_process(trained_run, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [json.loads(line) for line in (trained_run.dir / "predictions.jsonl").read_text().splitlines()][:3]
    src.write_text("".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    proc = run_job("predict", "--run", str(trained_run.dir), "--input", str(src), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    # same weights, same prompt, greedy: the summaries the run scored
    assert [g["summary"] for g in got] == [r["finetuned"] for r in rows]


def test_predict_never_writes_into_a_complete_run_and_keeps_an_existing_file(tmp_path):
    import pytest

    from job import predict
    from job.errors import OutputError
    from tests.test_publish import make_run

    run = make_run(tmp_path, "done")  # complete (it holds manifest.json); the model is never loaded here
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "1", "dialogue": "#Person1#: Hi."}\n')
    metrics = (run / "metrics.json").read_bytes()
    for target in (run / "metrics.json", run / "new.jsonl", run / "adapter" / "out.jsonl"):
        for extra in ([], ["--overwrite"]):
            with pytest.raises(OutputError, match=r"lies in the complete run folder .*/done .*never written again"):
                predict.main(["--run", str(run), "--input", str(src), "--output", str(target), *extra])
    assert (run / "metrics.json").read_bytes() == metrics and not (run / "new.jsonl").exists()
    assert rundir.verify(run) == []

    kept = tmp_path / "summaries.jsonl"
    kept.write_text("mine\n")
    with pytest.raises(OutputError, match=r"--output .*summaries\.jsonl exists; pass --overwrite to replace it"):
        predict.main(["--run", str(run), "--input", str(src), "--output", str(kept)])
    assert kept.read_text() == "mine\n"


def test_predict_overwrite_replaces_an_existing_file(trained_run, tmp_path):
    src = tmp_path / "in.jsonl"
    row = json.loads((trained_run.dir / "predictions.jsonl").read_text().splitlines()[0])
    src.write_text(json.dumps({"id": row["id"], "dialogue": row["dialogue"]}) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    proc = run_job_here(
        "predict", "--run", str(trained_run.dir), "--input", str(src), "--output", str(out), "--overwrite"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["summary"] == row["finetuned"]
