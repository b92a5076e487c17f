"""The merged model is the 16-bit base with the adapter applied: same weights, so the same greedy output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from job import builtin, merge, runtime
from job import config as config_mod
from tests.conftest import run_job_here

PROMPT = "Summarize the following conversation.\n\n#Person1#: Shall we meet at noon?\n#Person2#: Yes.\n\nSummary:"


def make_adapter_run(tmp_path: Path) -> tuple[Path, config_mod.Config]:
    """A run folder with the built-in base and an adapter whose LoRA weights are random (not zero), so merging
    changes the model."""
    run = tmp_path / "run-m"
    builtin.build("builtin:tiny-llama", run / "base_model")
    base = AutoModelForCausalLM.from_pretrained(run / "base_model", dtype=torch.float32)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    model.peft_config["default"].base_model_name_or_path = "builtin:tiny-llama"
    model.save_pretrained(run / "adapter")
    builtin.load_tokenizer().save_pretrained(run / "adapter")
    return run, config_mod.resolve("test", [f"output.uri={tmp_path}", "output.run_name=run-m", "output.merge=true"])


def greedy(model, tokenizer, new_tokens: int = 24) -> tuple[list[int], torch.Tensor]:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
        out = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist(), logits


def unmerged(run: Path):
    base = AutoModelForCausalLM.from_pretrained(run / "base_model", dtype=torch.float32)
    return PeftModel.from_pretrained(base, run / "adapter").eval()


def test_merged_model_equals_base_with_adapter_unmerged(tmp_path):
    run, cfg = make_adapter_run(tmp_path)
    dest = merge.merge_run(run, cfg, merge.merged_dir(run))
    assert dest == run / "merged"

    merged = AutoModelForCausalLM.from_pretrained(dest).eval()
    tokenizer = AutoTokenizer.from_pretrained(dest)
    merged_ids, merged_logits = greedy(merged, tokenizer)
    reference_ids, reference_logits = greedy(unmerged(run), tokenizer)
    base_ids, base_logits = greedy(AutoModelForCausalLM.from_pretrained(run / "base_model").eval(), tokenizer)

    assert merged_ids == reference_ids
    torch.testing.assert_close(merged_logits, reference_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-2  # the adapter did change the model
    assert not any(p.name.endswith(".bin") for p in dest.iterdir())
    assert (dest / "model.safetensors").is_file()
    assert "differs from the model that was trained and evaluated by the 4-bit quantization error" in " ".join(
        (dest / "README.md").read_text().split()
    )


def test_merged_model_stays_out_of_sagemakers_model_folder(tmp_path, monkeypatch):
    model_dir = tmp_path / "opt-ml-model"
    monkeypatch.setenv("SM_MODEL_DIR", str(model_dir))
    monkeypatch.setattr(runtime, "OPT_ML", tmp_path / "opt-ml")
    assert merge.merged_dir(model_dir / "job-1") == tmp_path / "opt-ml" / "output" / "data" / "job-1" / "merged"
    monkeypatch.delenv("SM_MODEL_DIR")
    assert merge.merged_dir(tmp_path / "runs" / "job-1") == tmp_path / "runs" / "job-1" / "merged"


@pytest.mark.slow
def test_train_with_merge_writes_a_merged_model_equal_to_the_trained_adapter(tmp_path):
    result = run_job_here(
        "train", "--config", "test", f"output.uri={tmp_path}", "output.run_name=merged-run", "output.merge=true"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = Path(result.stdout.strip().splitlines()[-1])
    manifest = {f["path"] for f in json.loads((run / "manifest.json").read_text())["files"]}
    assert {"merged/model.safetensors", "merged/config.json", "merged/tokenizer.json"} <= manifest

    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    merged_ids, merged_logits = greedy(AutoModelForCausalLM.from_pretrained(run / "merged").eval(), tokenizer)
    reference_ids, reference_logits = greedy(unmerged(run), tokenizer)
    assert merged_ids == reference_ids
    torch.testing.assert_close(merged_logits, reference_logits, rtol=1e-4, atol=1e-4)
