"""What would break or mislead on CUDA while every CPU run passes, shown on the CPU where the CPU can show it: FSDP's
checkpoint files and the resume rule, the FSDP refusal and its optimizer, method=full's fp32 master weights, the
fine-tuned model generating in the compute dtype, the T5 in-context budget, and batches formed the same for any
number of ranks. Real code throughout: the tiny built-in models, the real 4-bit path, accelerate's own file names."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import dialogs
from job import builtin, generation, modeling, prompts, training
from job import config as C
from job.errors import ConfigInputError, TrainingError
from job.modeling import Hardware

# ----------------------------------------------------------------------------------------------
# FSDP: checkpoints, resume, refusal, optimizer


def _checkpoint(folder, step: int, optimizer: str, model: str = "adapter_model.safetensors"):
    """A complete checkpoint laid out as the Trainer writes it: trainer state, scheduler, optimizer and weights."""
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    state = {"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    if optimizer.endswith("_0"):  # a sharded optimizer: a folder
        (path / optimizer).mkdir()
        torch.save(state, path / optimizer / "__0_0.distcp")
    else:
        torch.save(state, path / optimizer)
    weights = {"lora_A.weight": torch.ones(2, 4)}
    if model.endswith(".safetensors"):
        save_file(weights, str(path / model))
    else:
        torch.save(weights, path / model)
    (path / training.COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    return path


def test_fsdp_checkpoints_are_resumed_from(tmp_path):
    """accelerate's FSDP save writes optimizer.bin (full state dict) or optimizer_0/ (sharded), not the Trainer's
    optimizer.pt: the resume rule reads all three, so an FSDP run never restarts from step 0."""
    from accelerate.utils.constants import FSDP_MODEL_NAME, OPTIMIZER_NAME

    ddp = _checkpoint(tmp_path / "ddp", 4, "optimizer.pt")
    full = _checkpoint(tmp_path / "full", 4, f"{OPTIMIZER_NAME}.bin")
    sharded = _checkpoint(tmp_path / "sharded", 4, f"{OPTIMIZER_NAME}_0", f"{FSDP_MODEL_NAME}.bin")
    for path in (ddp, full, sharded):
        assert training.checkpoint_loadable(path), path
        assert training.resume_point(path.parent) == path


def test_checkpoints_that_cannot_be_read_stop_the_run_instead_of_restarting(tmp_path):
    path = _checkpoint(tmp_path, 6, "optimizer.bin")
    (path / "optimizer.bin").unlink()
    with pytest.raises(TrainingError, match="cannot resume; move or delete"):
        training.resume_point(tmp_path)
    assert training.resume_point(tmp_path / "none yet") is None  # a first run starts from step 0


def test_fsdp_on_several_cuda_processes_is_refused_in_one_line():
    cfg = C.resolve("test", ["train.fsdp=true"])
    with pytest.raises(ConfigInputError, match="train.fsdp=true with 2 CUDA processes has not been proved"):
        training.check_fsdp(cfg, cuda=True, processes=2)
    training.check_fsdp(cfg, cuda=False, processes=2)  # CPU processes run DDP
    training.check_fsdp(cfg, cuda=True, processes=1)  # one process: nothing to shard
    training.check_fsdp(C.resolve("test"), cuda=True, processes=8)


def test_fsdp_takes_plain_adamw_and_refuses_bitsandbytes_optimizers(monkeypatch):
    gpu = Hardware(device="cuda", name="NVIDIA A10G", compute_dtype=torch.bfloat16, capability=(8, 6))
    cfg = C.resolve("test", ["train.fsdp=true"])
    assert training.optimizer_name(cfg, gpu) == "paged_adamw_8bit"  # one process: no FSDP
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training.fsdp_active(cfg, gpu)
    assert training.optimizer_name(cfg, gpu) == "adamw_torch"  # bitsandbytes#1633: no DTensor support
    assert training.fsdp_arguments(cfg, gpu)["fsdp_config"]["version"] == 2
    cpu = Hardware(device="cpu", name="cpu", compute_dtype=torch.float32, capability=None)
    assert training.fsdp_arguments(cfg, cpu) == {}  # accelerate runs DDP on CPU processes; the job says so
    with pytest.raises(C.ConfigError, match="does not take FSDP.s sharded"):
        C.resolve("test", ["train.fsdp=true", "train.optimizer=paged_adamw_8bit"])


# ----------------------------------------------------------------------------------------------
# method=full in fp16: fp32 master weights


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return builtin.build("builtin:tiny-llama", tmp_path_factory.mktemp("tiny-llama"))


def _one_scaled_step(model) -> None:
    """One fp16 mixed-precision step as the Trainer takes it with fp16=True: autocast forward, scaled backward,
    unscale (for gradient clipping), step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()


def test_full_fine_tuning_in_fp16_trains_fp32_master_weights(llama_dir):
    cfg = C.resolve("test", ["method=full", "model.compute_dtype=float16"])
    t4 = Hardware(device="cuda", name="Tesla T4", compute_dtype=torch.float16, capability=(7, 5))
    assert modeling.weights_dtype(cfg, t4) == torch.float32
    assert modeling.weights_dtype(C.resolve("test"), t4) == torch.float16  # adapters: the frozen base stays 16-bit
    hw = Hardware(device="cpu", name="cpu", compute_dtype=torch.float16, capability=None)
    model = modeling.add_adapters(modeling.load_base_model(cfg, str(llama_dir), hw), cfg)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    _one_scaled_step(model)
    # the premise: trainable fp16 weights stop the GradScaler at the first step
    model.half()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        _one_scaled_step(model)


# ----------------------------------------------------------------------------------------------
# The fine-tuned model generates in the compute dtype


def test_fine_tuned_model_generates_as_predict_reloads_it(llama_dir, tmp_path):
    """prepare_model_for_kbit_training upcasts embeddings and norms to fp32; once trained, the frozen base goes back to
    the compute dtype, so the fine-tuned model computes exactly as the base was scored and as `predict` reloads it."""
    from peft import PeftModel

    cfg = C.resolve("test", ["model.compute_dtype=bfloat16"])
    hw = modeling.detect_hardware("bfloat16")
    model = modeling.add_adapters(modeling.load_base_model(cfg, str(llama_dir), hw), cfg)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.__class__.__name__ != "Params4bit"}
    assert torch.float32 in frozen  # the premise: the upcast happened
    with torch.no_grad():  # as if trained: non-zero LoRA B
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    modeling.ready_for_generation(model, hw)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.__class__.__name__ != "Params4bit"}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # adapters as PEFT loads them
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(modeling.load_base_model(cfg, str(llama_dir), hw), tmp_path / "adapter")
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)


# ----------------------------------------------------------------------------------------------
# The T5 in-context budget


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = builtin.build("builtin:tiny-t5", tmp_path_factory.mktemp("tiny-t5"))
    cfg = C.resolve("test", ["model.name=builtin:tiny-t5", "method=lora", "eval.max_new_tokens=200"])
    model = modeling.load_base_model(cfg, str(folder), modeling.detect_hardware("float32"))
    return cfg, model, modeling.load_tokenizer(str(folder), cfg)


def test_t5_in_context_budget_keeps_the_decoders_tokens_out_of_the_encoder(t5):
    """FLAN-T5's 512 positions: the summary is the decoder's, so the encoder's prompt keeps all 512, and a
    DialogSum-length dialogue after one shot is no longer cut; three shots cannot fit at all."""
    from datasets import Dataset

    from job.train import in_context_prompts

    cfg, model, tokenizer = t5
    context = model.config.n_positions
    assert context == 512
    assert prompts.prompt_budget(cfg.data, True, shots=True, context=context, max_new_tokens=200) == 512
    assert prompts.prompt_budget(cfg.data, False, shots=True, context=context, max_new_tokens=200) == 312
    examples = dialogs.examples(40)
    length = {e.dialogue: len(tokenizer(e.dialogue)["input_ids"]) for e in examples}
    long = [e for e in examples if 180 <= length[e.dialogue] <= 230]
    assert len(long) >= 5, "expected DialogSum-length dialogues"
    train_split = Dataset.from_list([{"dialogue": e.dialogue, "summary": e.summary} for e in long[1:]])
    scored = [type("Dialogue", (), {"dialogue": long[0].dialogue})()]

    ids = in_context_prompts(cfg, tokenizer, model, train_split, scored, "one_shot")[0]
    assert 312 < len(ids) <= 512  # the old budget (512 - 200) would have cut it
    assert long[0].dialogue.strip()[-60:] in tokenizer.decode(ids, skip_special_tokens=True)  # the whole dialogue
    with pytest.raises(ConfigInputError, match="3 shots alone exceed the model's context of 512 tokens;"):
        in_context_prompts(cfg, tokenizer, model, train_split, scored, "few_shot")


def test_a_baseline_that_cannot_fit_stops_the_run_before_any_scoring(tmp_path):
    from tests.conftest import run_job_here

    proc = run_job_here(
        "train",
        "--config",
        "test",
        f"output.uri={tmp_path}",
        "output.run_name=shots",
        "eval.baselines=[few_shot]",
        "eval.few_shot_examples=80",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "80 shots alone exceed the model's context of 2048 tokens minus eval.max_new_tokens=24" in proc.stderr
    assert "base model summaries" not in proc.stderr  # no generation ran


# ----------------------------------------------------------------------------------------------
# Batches formed globally


def test_batches_are_the_same_for_any_number_of_ranks(llama_dir):
    cfg = C.resolve("test")
    hw = modeling.detect_hardware("float32")
    model = modeling.load_base_model(cfg, str(llama_dir), hw)
    tokenizer = modeling.load_tokenizer(str(llama_dir), cfg)
    budget = prompts.prompt_budget(cfg.data)
    ids = [prompts.prompt_ids_for_generation(tokenizer, cfg.data, e.dialogue, budget) for e in dialogs.examples(7)]
    batches = generation.plan_batches([len(p) for p in ids], 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    lengths = [len(ids[i]) for b in batches for i in b]
    assert lengths == sorted(lengths, reverse=True)
    texts = {}
    for world in (1, 2, 3):
        merged = [""] * len(ids)
        for rank in range(world):  # each rank's share, as generate_across_ranks deals them
            out = generation.generate_batches(model, tokenizer, ids, batches[rank::world], 8, 3, show_progress=False)
            for b in batches[rank::world]:
                for i in b:
                    merged[i] = out.texts[i]
        texts[world] = merged
    assert texts[1] == texts[2] == texts[3] and all(texts[1])


def test_an_out_of_memory_halving_is_logged_and_returned(llama_dir, monkeypatch, caplog):
    cfg = C.resolve("test")
    model = modeling.load_base_model(cfg, str(llama_dir), modeling.detect_hardware("float32"))
    tokenizer = modeling.load_tokenizer(str(llama_dir), cfg)
    ids = [[1, 40 + i, 41, 42 + i] for i in range(6)]
    monkeypatch.setenv("DIALOGSUM_FAULTS", "oom_generate@4")  # a batch of 4 prompts runs out of memory
    out = generation.generate(model, tokenizer, ids, 4, 4, show_progress=False)
    assert out.batch_size == 4 and out.halved_to == 2
    assert "eval batch size halved to 2" in caplog.text
    assert all(out.texts)
