"""The job under `torchrun --nproc_per_node 2` on the CPU (gloo): DDP over two processes, each with its own 4-bit
model; rank 0 alone writes exactly one run folder; killed mid-training and restarted, it resumes."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from job import faults, rundir
from tests.conftest import REPO, job_env

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port nothing listens on now: a fixed one can still be held (a killed run's rank, the other xdist worker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "job",
        "train",
        "--config",
        "test",
        *args,
    ]


# 16 steps with a checkpoint every 4; the first run of each test is slowed (SLOWED) so that it is still training
# when it is interrupted after its first checkpoint, and the run that resumes trains the rest at full speed.
LONG_RUN = ("train.max_steps=16", "train.save_steps=4", "train.eval_steps=4", "eval.base=false")
SLOWED = {faults.ENV: "slow_step", faults.SLOW_STEP_ENV: "0.3"}


def start_until_a_checkpoint(tmp_path: Path, env: dict[str, str]) -> tuple[list[str], subprocess.Popen]:
    """Start a long two-process run (output in first.log) and return once its first checkpoint is complete."""
    args = torchrun(f"output.uri={tmp_path}", "output.run_name=ddp", *LONG_RUN)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    checkpoints = tmp_path / "ddp" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(
        (p / "checkpoint-complete.json").is_file() for p in checkpoints.glob("checkpoint-*")
    ):
        if first.poll() is not None:
            pytest.fail("the first run ended before a checkpoint was written:\n" + (tmp_path / "first.log").read_text())
        time.sleep(0.1)
    return args, first


def test_two_processes_write_one_complete_run(tmp_path):
    proc = subprocess.run(
        torchrun(f"output.uri={tmp_path}", "output.run_name=ddp"),
        capture_output=True,
        text=True,
        env=job_env(),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    run = tmp_path / "ddp"
    assert rundir.verify(run) == []
    assert proc.stdout.count(str(run)) == 1  # only rank 0 reports the folder
    assert "x 2 processes" in proc.stderr  # effective batch counts both ranks
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 12 and metrics["scorer"]["n_dialogues"] == 6
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    # generation was split across the ranks and gathered back in the original order
    test_ids = [f"test_{i}_1" for i in range(6)]
    assert [p["id"] for p in preds] == test_ids and all(isinstance(p["finetuned"], str) for p in preds)
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "builtin:tiny-llama"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's writer only


def test_killed_and_restarted_it_resumes(tmp_path):
    args, first = start_until_a_checkpoint(tmp_path, job_env(**SLOWED))
    # the launcher and both ranks at once, like a spot reclaim (the ranks run in sessions of their own)
    for process in [*psutil.Process(first.pid).children(recursive=True), psutil.Process(first.pid)]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:  # a rank that ended on its own in the meantime
            pass
    first.wait(timeout=60)
    assert not rundir.is_complete(tmp_path / "ddp")
    second = subprocess.run(args, capture_output=True, text=True, env=job_env(), cwd=REPO, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resuming from checkpoint" in second.stderr
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 16 and metrics["run"]["resumed_from"]
    assert rundir.verify(tmp_path / "ddp") == []
    assert Path(metrics["run"]["resumed_from"]).name.startswith("checkpoint-")


def test_fsdp_on_cpu_processes_says_it_trains_with_ddp_and_saves_a_whole_adapter(tmp_path):
    """accelerate switches FSDP on for CUDA processes only (MULTI_CPU here): the job says so instead of claiming to
    shard. FSDP itself is checked on a GPU by `python -m benchmarks gpu` (one process)."""
    from safetensors.torch import load_file

    proc = subprocess.run(
        torchrun(f"output.uri={tmp_path}", "output.run_name=fsdp", "train.fsdp=true", "eval.base=false"),
        capture_output=True,
        text=True,
        env=job_env(),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "train.fsdp=true on CPU processes: FSDP shards CUDA processes only; training with DDP" in proc.stderr
    run = tmp_path / "fsdp"
    assert rundir.verify(run) == []
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    # every LoRA matrix whole (rank 8 of the test preset), not a rank's flat shard, and trained
    assert len(weights) == 2 * 7 * 2
    assert all(v.shape[0] == 8 for k, v in weights.items() if "lora_A" in k)
    assert sum(float(v.abs().sum()) for k, v in weights.items() if "lora_B" in k) > 0


def test_sigterm_reaching_one_rank_stops_both_after_the_same_step_and_the_run_resumes(tmp_path):
    """A signal that reaches one rank alone (or the ranks a step apart) must not leave the other in its next
    all-reduce: both save the same checkpoint and stop, and the same command finishes the run."""
    args, first = start_until_a_checkpoint(tmp_path, job_env(**SLOWED))
    checkpoints = tmp_path / "ddp" / "checkpoints"
    ranks = {p.environ().get("LOCAL_RANK"): p for p in psutil.Process(first.pid).children(recursive=True)}
    ranks["1"].send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    text = (tmp_path / "first.log").read_text()
    assert first.returncode != 0, text[-4000:]
    assert text.count("SIGTERM received") == 1 and text.count("another rank received SIGTERM") == 1, text[-4000:]
    # Not anchored at line starts: the two ranks write stderr at once and may share a line.
    stopped = re.findall(r"error \(interrupted\): stopped by SIGTERM at step (\d+)", text)
    assert len(stopped) == 2 and len(set(stopped)) == 1, text[-4000:]  # both ranks, the same step
    step = stopped[0]
    assert (checkpoints / f"checkpoint-{step}" / "checkpoint-complete.json").is_file()
    assert not rundir.is_complete(tmp_path / "ddp")

    second = subprocess.run(args, capture_output=True, text=True, env=job_env(), cwd=REPO, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert Path(metrics["run"]["resumed_from"]).name == f"checkpoint-{step}"
    assert metrics["train"]["steps"] == 16 and rundir.verify(tmp_path / "ddp") == []
