"""`python -m launch kaggle`: the kernel folder, the real `kaggle` client against Kaggle's HTTP API answered by
`responses`, and the generated kernel file run locally on the `test` preset.

Kaggle's API cannot run locally, so its HTTP answers are the one fake here: the `responses` library answers the
client's requests to https://api.kaggle.com/v1/kernels.KernelsApiService/* (and the output files' download URLs);
everything from the launcher down to the client's request encoding is real. `kaggle_secrets` exists only inside
Kaggle's image: the kernel-file tests put a stand-in module on the subprocess's sys.path (see FAKE_SECRETS).
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import responses

from launch.kaggle import cli as kaggle
from launch.kaggle import kernel_folder

REPO = Path(__file__).resolve().parents[1]
API = "https://api.kaggle.com/v1/kernels.KernelsApiService"
FILES = "https://storage.example.test/kernel-output"
KERNEL = "alice/dialogsum-test"
PLANTED_HF = "hf_PLANTEDtoken0123456789abcdef"
PLANTED_KAGGLE_KEY = "PLANTEDkaggleKEY0123456789abcdef"

FAKE_SECRETS = '''"""Stand-in for Kaggle's `kaggle_secrets` (only inside Kaggle's image): the secrets attached to the notebook
come from FAKE_KAGGLE_SECRETS (JSON); like the real client it raises a plain Exception for one not attached."""
import json
import os


class UserSecretsClient:
    def get_secret(self, label):
        attached = json.loads(os.environ.get("FAKE_KAGGLE_SECRETS", "{}"))
        if label not in attached:
            raise Exception(f"Unexpected response from the service: no secret {label} attached")
        return attached[label]
'''


@pytest.fixture
def creds(tmp_path, monkeypatch):
    """Legacy username/key credentials and an empty HOME, so no developer's own Kaggle token is picked up."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name.startswith("HF_TOKEN"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", PLANTED_KAGGLE_KEY)
    monkeypatch.setenv("HF_TOKEN", PLANTED_HF)  # planted: must never reach the kernel or the push request
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def answer(rsps, method: str, body: dict | None = None, status: int = 200) -> None:
    rsps.add(responses.POST, f"{API}/{method}", json=body if body is not None else {}, status=status)


def bodies(rsps, method: str) -> list[dict]:
    return [json.loads(c.request.body) for c in rsps.calls if c.request.url.endswith(f"/{method}")]


def payload_bytes(code: str) -> bytes:
    """The uncompressed tar inside the code file, read the way Python reads the PAYLOAD assignment."""
    tree = ast.parse(code)
    (encoded,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "PAYLOAD"]
    return gzip.decompress(base64.b64decode(encoded))


def read_payload(code: str) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(payload_bytes(code)))


# ----------------------------------------------------------------------------------------------
# The kernel folder


def test_dry_run_writes_the_kernel_folder_without_network(creds, api, capsys):
    """No request is registered: any HTTP call would fail the command."""
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--dry-run", "--folder", "k"]) == 0
    assert len(api.calls) == 0

    from slugify import slugify  # what the kaggle client checks the title against

    meta = json.loads(Path("k/kernel-metadata.json").read_text())
    assert meta["id"] == KERNEL
    assert 5 <= len(meta["title"]) <= 50 and slugify(meta["title"]) == "dialogsum-test"
    assert (meta["code_file"], meta["language"], meta["kernel_type"]) == ("dialogsum_kernel.py", "python", "script")
    assert meta["is_private"] is True and meta["enable_internet"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["kernel_sources"] == []
    assert sorted(p.name for p in Path("k").iterdir()) == ["dialogsum_kernel.py", "kernel-metadata.json"]

    out = capsys.readouterr().out
    assert '"machine_shape": "NvidiaTeslaT4"' in out and "run: dialogsum-test-" in out and "h on 2x T4" in out

    code = Path("k/dialogsum_kernel.py").read_text()
    compile(code, "dialogsum_kernel.py", "exec")
    archive = read_payload(code)
    names = archive.getnames()
    assert {"job/train.py", "job/presets/test.yaml", "job/builtin/train.jsonl", "config.yaml"} <= set(names)
    assert not [n for n in names if "__pycache__" in n]
    config = archive.extractfile("config.yaml").read().decode()
    assert "uri: /kaggle/working/runs" in config and "checkpoint_dir: /kaggle/working/checkpoints" in config
    requirements = archive.extractfile("requirements.txt").read().decode().split()
    assert any(r.startswith("transformers") for r in requirements) and any(r.startswith("peft") for r in requirements)
    assert not [r for r in requirements if re.match(r"torch\b", r)]  # Kaggle's CUDA torch stays


def test_public_and_accelerator_options_reach_the_metadata(creds, capsys):
    argv = ["--config", "test", "--kernel", KERNEL, "--dry-run", "--folder", "k", "--public"]
    assert kaggle.main([*argv, "--accelerator", "NvidiaTeslaP100"]) == 0
    meta = json.loads(Path("k/kernel-metadata.json").read_text())
    assert meta["is_private"] is False and meta["machine_shape"] == "NvidiaTeslaP100"
    assert "NvidiaTeslaP100 is retired: Kaggle runs the kernel on T4 instead" in capsys.readouterr().err


def test_same_config_gives_the_same_code_file(creds):
    for folder in ("a", "b"):
        kaggle.main(["--config", "test", "--kernel", KERNEL, "--dry-run", "--folder", folder])
    assert Path("a/dialogsum_kernel.py").read_bytes() == Path("b/dialogsum_kernel.py").read_bytes()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kernel", "alice"], "OWNER/SLUG"),
        (["--kernel", "alice/abc"], "5-50 lowercase"),
        (["--kernel", "alice/Dialog_Sum"], "5-50 lowercase"),
        (["--kernel", KERNEL, "--accelerator", "Tpu1VmV38"], "needs an NVIDIA GPU"),
        (["--kernel", KERNEL, "train.nonsense=1"], "nonsense"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(creds, capsys, argv, message):
    assert kaggle.main(["--config", "test", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_over_twelve_hours_suggests_resume_and_fewer_steps(creds, capsys):
    config = str(REPO / "job/presets/llama-3.2-3b-qlora.yaml")
    assert kaggle.main(["--config", config, "--kernel", KERNEL, "--dry-run", "train.epochs=24"]) == 0
    err = capsys.readouterr().err
    hours = float(re.search(r"~([0-9.]+) h on 2x T4 is more than a Kaggle session", err).group(1))
    assert hours > 12 and "--resume" in err
    steps = int(re.search(r"train.max_steps=(\d+) fits one session", err).group(1))
    from job.config import resolve

    shorter = resolve(config, [f"train.max_steps={steps}"])
    assert kernel_folder.estimate_hours(shorter) <= kernel_folder.SESSION_HOURS


def test_output_over_kaggle_limit_warns(creds, capsys):
    argv = ["model.name=meta-llama/Llama-3.1-8B", "output.merge=true", "lora.r=64"]
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--dry-run", *argv]) == 0
    assert "20 GB output limit" in capsys.readouterr().err
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--dry-run"]) == 0
    assert "output limit" not in capsys.readouterr().err


def test_hub_model_prints_the_secret_step(creds, capsys):
    kaggle.main(["--config", "test", "--kernel", KERNEL, "--dry-run", "model.name=meta-llama/Llama-3.2-3B-Instruct"])
    out = capsys.readouterr().out
    assert "HF_TOKEN" in out and f"https://www.kaggle.com/code/{KERNEL}/edit" in out


# ----------------------------------------------------------------------------------------------
# Pushing


def quota(used_hours: float) -> dict:
    return {"gpuQuota": {"timeUsed": f"{used_hours * 3600:.0f}s", "totalTimeAllowed": "108000s"}}


def test_push_sends_the_kernel_and_keeps_the_version(creds, api, capsys):
    answer(api, "GetAcceleratorQuotaStatistics", quota(29.95))
    answer(
        api,
        "SaveKernel",
        {"ref": f"/code/{KERNEL}", "url": f"https://www.kaggle.com/code/{KERNEL}", "versionNumber": 3},
    )
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--folder", "k"]) == 0

    (sent,) = bodies(api, "SaveKernel")
    assert sent["slug"] == KERNEL and sent["newTitle"] == "Dialogsum test"
    assert sent["language"] == "python" and sent["kernelType"] == "script"
    assert sent["isPrivate"] is True and sent["enableInternet"] is True and sent["enableGpu"] is True
    assert sent["machineShape"] == "NvidiaTeslaT4"
    assert sent["text"] == Path("k/dialogsum_kernel.py").read_text()
    assert not sent.get("kernelDataSources")

    out = capsys.readouterr().out
    assert f"pushed {KERNEL} version 3" in out and f"status {KERNEL}/3 --wait" in out
    assert "weekly GPU quota: 0.1 h left of 30 h; WARNING: this run needs ~0.2 h" in out


def test_planted_tokens_never_reach_the_kernel_or_the_request(creds, api):
    answer(api, "GetAcceleratorQuotaStatistics", status=500)
    answer(api, "SaveKernel", {"ref": f"/code/{KERNEL}", "url": "u", "versionNumber": 1})
    argv = ["--config", "test", "--kernel", KERNEL, "--folder", "k", "model.name=meta-llama/Llama-3.2-1B"]
    assert kaggle.main(argv) == 0
    request = next(c.request for c in api.calls if c.request.url.endswith("/SaveKernel"))
    assert "Authorization" in request.headers  # the key travels in the header, as the client sends it
    for secret in (PLANTED_HF, PLANTED_KAGGLE_KEY):
        assert secret.encode() not in request.body
        for path in Path("k").rglob("*"):
            assert secret.encode() not in path.read_bytes()
        assert secret.encode() not in payload_bytes(Path("k/dialogsum_kernel.py").read_text())


def resumable(rsps, status: str = "COMPLETE", files: list[str] | None = None, failure: str | None = None) -> None:
    """The newest version as the resume check reads it: its status, then its output listing."""
    answer(rsps, "GetKernelSessionStatus", {"status": status, **({"failureMessage": failure} if failure else {})})
    names = ["checkpoints/checkpoint-6/adapter_config.json", "session-limit.json"] if files is None else files
    listing = [{"fileName": n, "url": f"{FILES}/previous/{i}"} for i, n in enumerate(names)]
    answer(rsps, "ListKernelSessionOutput", {"files": listing, "log": ""})


def test_resume_attaches_the_previous_output_as_a_kernel_source(creds, api):
    resumable(api)
    answer(api, "GetAcceleratorQuotaStatistics", quota(1))
    answer(api, "SaveKernel", {"ref": f"/code/{KERNEL}", "url": "u", "versionNumber": 4})
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--folder", "k", "--resume"]) == 0
    (sent,) = bodies(api, "SaveKernel")
    assert sent["kernelDataSources"] == [KERNEL]
    assert "'resume': True" in sent["text"]
    # the check read the newest version, the one Kaggle mounts: no version label
    assert bodies(api, "GetKernelSessionStatus") == [{"userName": "alice", "kernelSlug": "dialogsum-test"}]


@pytest.mark.parametrize(
    ("status", "failure", "files", "message"),
    [
        (
            "RUNNING",
            None,
            None,
            f"is still RUNNING; wait until it ends (`python -m launch kaggle status {KERNEL} --wait`)",
        ),
        ("QUEUED", None, None, "is still QUEUED"),
        ("ERROR", "Out of memory", None, "ended ERROR: Out of memory, not COMPLETE, so there is no run to continue"),
        ("CANCEL_ACKNOWLEDGED", None, None, "ended CANCEL_ACKNOWLEDGED, not COMPLETE"),
        ("COMPLETE", None, [], "has no output, so a resumed version would start over; push without --resume"),
        ("COMPLETE", None, ["session-limit.json"], "left no checkpoints in its output"),
    ],
)
def test_resume_from_a_version_that_cannot_be_continued_is_refused_before_pushing(
    creds, api, capsys, status, failure, files, message
):
    resumable(api, status, files, failure)
    answer(api, "GetAcceleratorQuotaStatistics", quota(1))
    answer(api, "SaveKernel", {"ref": f"/code/{KERNEL}", "url": "u", "versionNumber": 4})
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--folder", "k", "--resume"]) == 1
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --resume: the newest version of {KERNEL} ") and message in line
    assert bodies(api, "SaveKernel") == [] and bodies(api, "GetAcceleratorQuotaStatistics") == []
    assert not Path("k").exists()


def test_resume_of_a_kernel_without_versions_is_refused(creds, api, capsys):
    answer(api, "GetKernelSessionStatus", {"code": 404, "message": "Not found"}, status=404)
    answer(api, "SaveKernel", {"ref": f"/code/{KERNEL}", "url": "u", "versionNumber": 1})
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--folder", "k", "--resume"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: --resume: {KERNEL} has no version to resume from; push it without --resume"
    assert bodies(api, "SaveKernel") == []


def test_push_refused_with_error_set(creds, api, capsys):
    answer(api, "GetAcceleratorQuotaStatistics", quota(0))
    answer(api, "SaveKernel", {"error": "Phone verification is required to use GPUs and the internet"})
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--folder", "k"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Kaggle refused the push: Phone verification") and "kaggle.com/settings" in err[-1]


def test_push_rejected_credentials(creds, api, capsys):
    answer(api, "GetAcceleratorQuotaStatistics", status=401)
    answer(api, "SaveKernel", {"code": 401, "message": "Unauthenticated"}, status=401)
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--folder", "k"]) == 3
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "kaggle.com/settings" in err and PLANTED_KAGGLE_KEY not in err


def test_access_token_names_the_owner_and_stays_out_of_the_request(creds, api, monkeypatch, capsys):
    """KAGGLE_API_TOKEN: the client asks Kaggle whose token it is; the default kernel is <that user>/dialogsum-test."""
    token = "KGAT_PLANTEDaccess0123456789abcdef"
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", token)
    api.add(
        responses.POST,
        "https://api.kaggle.com/v1/security.OAuthService/IntrospectToken",
        json={"active": True, "username": "carol"},
    )
    answer(api, "GetAcceleratorQuotaStatistics", quota(0))
    answer(api, "SaveKernel", {"ref": "/code/carol/dialogsum-test", "url": "u", "versionNumber": 1})
    assert kaggle.main(["--config", "test", "--folder", "k"]) == 0
    (sent,) = bodies(api, "SaveKernel")
    assert sent["slug"] == "carol/dialogsum-test"
    request = next(c.request for c in api.calls if c.request.url.endswith("/SaveKernel"))
    assert request.headers["Authorization"] == f"Bearer {token}" and token.encode() not in request.body
    assert token not in capsys.readouterr().out


def test_no_credentials_is_one_line(tmp_path):
    """A subprocess with an empty HOME and no KAGGLE_* variables: the real client finds nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"), PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "launch", "kaggle", "--config", "test", "--kernel", KERNEL, "--folder", "k"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: no usable Kaggle credentials (none found, or the token was refused): create")
    )
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------------------------
# Following and fetching


def fake_run_folder(root: Path, name: str) -> dict[str, bytes]:
    """A finished run's files as the kernel's output lists them (runs/<name>/...), with a matching manifest."""
    block = {m: v for m, v in (("rouge1", 0.41), ("rouge2", 0.17), ("rougeL", 0.33), ("rougeLsum", 0.35))}
    metrics = {
        "run": {"name": name},
        "scorer": {"n_dialogues": 6, "n_references": 18},
        "base": {
            **{m: v / 2 for m, v in block.items()},
            "ci95": {m: [v / 2 - 0.05, v / 2 + 0.05] for m, v in block.items()},
        },
        "finetuned": {**block, "ci95": {m: [v - 0.04, v + 0.04] for m, v in block.items()}},
    }
    files = {
        "metrics.json": json.dumps(metrics).encode(),
        "adapter/adapter_config.json": b'{"r": 8}',
        "adapter/adapter_model.safetensors": os.urandom(4096),
        "report.md": b"# report\n",
    }
    manifest = {
        "files": [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in files.items()]
    }
    files["manifest.json"] = json.dumps(manifest).encode()
    return {f"runs/{name}/{p}": b for p, b in files.items()}


def serve_output(api, files: dict[str, bytes], log: str = "", corrupt: str | None = None) -> None:
    """ListKernelSessionOutput in two pages, each file at its own download URL (manifest.json listed first)."""
    names = sorted(files, key=lambda n: not n.endswith("manifest.json"))
    entries = [{"fileName": n, "url": f"{FILES}/{i}"} for i, n in enumerate(names)]
    answer(api, "ListKernelSessionOutput", {"files": entries[:2], "log": log, "nextPageToken": "page2"})
    answer(api, "ListKernelSessionOutput", {"files": entries[2:], "log": log})
    for i, n in enumerate(names):
        body = b"corrupted" if n == corrupt else files[n]
        api.add(responses.GET, f"{FILES}/{i}", body=body)


def test_wait_follows_queued_running_complete_and_fetches(creds, api, capsys):
    answer(api, "GetAcceleratorQuotaStatistics", quota(1))
    answer(api, "SaveKernel", {"ref": f"/code/{KERNEL}", "url": "u", "versionNumber": 7})
    answer(api, "GetKernelSessionStatus", {"code": 404, "message": "Not found"}, status=404)  # not listed yet
    for status in ("QUEUED", "QUEUED"):
        answer(api, "GetKernelSessionStatus", {"status": status})
    answer(api, "GetKernelSessionStatus", {"code": 429, "message": "Too many requests"}, status=429)
    for status in ("RUNNING", "RUNNING", "COMPLETE"):
        answer(api, "GetKernelSessionStatus", {"status": status})
    files = fake_run_folder(creds, "dialogsum-test-1234abcd")
    serve_output(api, files, log='[{"stream_name":"stdout","time":1.0,"data":"done\\n"}]')

    code = kaggle.main(
        ["--config", "test", "--kernel", KERNEL, "--folder", "k", "--wait", "--out", "fetched"], poll_interval=0
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    changes = re.findall(rf"{KERNEL} version 7: (\w+) \(\d+ min\)", captured.out)
    assert changes == ["QUEUED", "RUNNING", "COMPLETE"]
    assert "HTTP 429" in captured.err and "retrying" in captured.err
    assert all(b["versionLabel"] == "v7" for b in bodies(api, "GetKernelSessionStatus"))
    assert all(b["versionLabel"] == "v7" for b in bodies(api, "ListKernelSessionOutput"))
    assert bodies(api, "ListKernelSessionOutput")[1]["pageToken"] == "page2"

    run_dir = Path("fetched/dialogsum-test-1234abcd")
    for name, data in files.items():
        assert (run_dir / name.split("/", 2)[2]).read_bytes() == data
    assert Path("fetched/dialogsum-test-1234abcd.kaggle-v7.log").is_file()
    # the ROUGE table in percent, as report.md and `launch sagemaker` show it (job.tables)
    assert "ROUGE (F-measure x 100) on 6 dialogues (18 references)" in captured.out
    assert re.search(r"^base \(zero-shot\)\s+20\.50 \(15\.50-25\.50\)\s+8\.50 \(3\.50-13\.50\)", captured.out, re.M)
    assert re.search(r"^fine-tuned\s+41\.00 \(37\.00-45\.00\)\s+17\.00 \(13\.00-21\.00\)", captured.out, re.M)
    assert re.search(r"^change \(fine-tuned - base\)\s+\+20\.50\s+\+8\.50\s+\+16\.50\s+\+17\.50$", captured.out, re.M)
    assert captured.out.strip().splitlines()[-1] == str(run_dir)


def test_push_with_sources_kaggle_could_not_attach_warns_and_follows_the_version(creds, api, capsys):
    """Kaggle saves and runs a version whose sources it could not resolve, listing them in invalid_*: the launcher
    warns once per source, saying what the version lacks, and follows it to COMPLETE and fetches as usual."""
    resumable(api)
    answer(api, "GetAcceleratorQuotaStatistics", quota(1))
    answer(
        api,
        "SaveKernel",
        {
            "ref": f"/code/{KERNEL}",
            "url": f"https://www.kaggle.com/code/{KERNEL}",
            "versionNumber": 5,
            "invalidKernelSources": [KERNEL],
            "invalidDatasetSources": ["bob/gone-dataset"],
            "invalidModelSources": ["bob/gone-model/transformers/default/1"],
        },
    )
    for status in ("RUNNING", "COMPLETE"):
        answer(api, "GetKernelSessionStatus", {"status": status})
    files = fake_run_folder(creds, "dialogsum-test-1234abcd")
    serve_output(api, files)

    argv = ["--config", "test", "--kernel", KERNEL, "--folder", "k", "--resume", "--wait", "--out", "fetched"]
    code = kaggle.main(argv, poll_interval=0)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("WARNING: Kaggle did not attach")]
    assert warnings == [
        f"WARNING: Kaggle did not attach the kernel source {KERNEL} to version 5: the previous version's checkpoints "
        "are not mounted, so it starts the run from the beginning and spends GPU quota on steps already done",
        "WARNING: Kaggle did not attach the dataset source bob/gone-dataset to version 5: it runs without it",
        "WARNING: Kaggle did not attach the model source bob/gone-model/transformers/default/1 to version 5: "
        "it runs without it",
    ]
    assert "error" not in captured.err
    assert re.findall(rf"{KERNEL} version 5: (\w+) \(", captured.out) == ["RUNNING", "COMPLETE"]
    followed = bodies(api, "GetKernelSessionStatus")[1:]  # the first is the resume check's
    assert followed and all(b["versionLabel"] == "v5" for b in followed)
    assert Path("fetched/dialogsum-test-1234abcd/manifest.json").is_file()
    assert captured.out.strip().splitlines()[-1] == "fetched/dialogsum-test-1234abcd"


def test_wait_on_error_prints_failure_and_log_tail(creds, api, capsys):
    answer(api, "GetAcceleratorQuotaStatistics", quota(1))
    answer(api, "SaveKernel", {"ref": f"/code/{KERNEL}", "url": "u", "versionNumber": 2})
    answer(api, "GetKernelSessionStatus", {"status": "QUEUED"})
    answer(
        api,
        "GetKernelSessionStatus",
        {"status": "ERROR", "failureMessage": "Your notebook tried to allocate more memory"},
    )
    lines = [{"stream_name": "stderr", "time": i, "data": f"line {i}\n"} for i in range(50)]
    lines.append({"stream_name": "stderr", "time": 51, "data": "error (auth): meta-llama/x is gated\n"})
    answer(api, "ListKernelSessionOutput", {"files": [], "log": json.dumps(lines)})

    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--folder", "k", "--wait"], poll_interval=0) == 1
    captured = capsys.readouterr()
    assert re.findall(rf"{KERNEL} version 2: (\w+) \(", captured.out) == ["QUEUED", "ERROR"]
    assert "ERROR: Your notebook tried to allocate more memory" in captured.err
    assert "error (auth): meta-llama/x is gated" in captured.err and "line 49" in captured.err
    assert "line 10\n" not in captured.err  # only the tail


def test_following_an_unknown_kernel_stops(creds, api, capsys):
    for _ in range(5):
        answer(api, "GetKernelSessionStatus", {"code": 404, "message": "Not found"}, status=404)
    assert kaggle.main(["status", f"{KERNEL}/9", "--wait"], poll_interval=0) == 3
    assert "HTTP 404: not found: check OWNER/SLUG" in capsys.readouterr().err
    assert len(bodies(api, "GetKernelSessionStatus")) == 4


def test_fetch_later_pins_the_version(creds, api, capsys):
    answer(api, "GetKernelSessionStatus", {"status": "COMPLETE"})
    serve_output(api, fake_run_folder(creds, "r1"))
    assert kaggle.main(["fetch", f"{KERNEL}/5", "--out", "fetched"]) == 0
    assert bodies(api, "GetKernelSessionStatus")[0] == {
        "userName": "alice",
        "kernelSlug": "dialogsum-test",
        "versionLabel": "v5",
    }
    assert Path("fetched/r1/manifest.json").is_file()
    assert re.search(r"^fine-tuned\s+41\.00 \(37\.00-45\.00\)", capsys.readouterr().out, re.M)


def test_fetch_of_a_running_version_says_to_wait(creds, api, capsys):
    answer(api, "GetKernelSessionStatus", {"status": "RUNNING"})
    assert kaggle.main(["fetch", f"{KERNEL}/5"]) == 1
    assert "still RUNNING" in capsys.readouterr().err


def test_status_prints_one_line(creds, api, capsys):
    answer(api, "GetKernelSessionStatus", {"status": "RUNNING"})
    assert kaggle.main(["status", f"{KERNEL}/5"]) == 0
    assert capsys.readouterr().out.strip() == f"{KERNEL} version 5: RUNNING"


def test_corrupt_download_leaves_no_manifest(creds, api, capsys):
    answer(api, "GetKernelSessionStatus", {"status": "COMPLETE"})
    serve_output(api, fake_run_folder(creds, "r1"), corrupt="runs/r1/report.md")
    assert kaggle.main(["fetch", f"{KERNEL}/5", "--out", "fetched"]) == 3
    assert "changed report.md" in capsys.readouterr().err
    assert not Path("fetched/r1/manifest.json").exists()


def test_output_naming_a_file_outside_the_run_folder_is_refused(creds, api, capsys, tmp_path):
    answer(api, "GetKernelSessionStatus", {"status": "COMPLETE"})
    files = fake_run_folder(creds, "r1")
    files["runs/r1/../../escaped.txt"] = b"x"
    serve_output(api, files)
    assert kaggle.main(["fetch", f"{KERNEL}/5", "--out", "fetched"]) == 3
    assert "outside its run folder" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists() and not Path("fetched/r1/manifest.json").exists()


def test_version_stopped_at_the_session_limit_says_resume(creds, api, capsys):
    answer(api, "GetKernelSessionStatus", {"status": "COMPLETE"})
    limit = {"run_name": "r1", "job_exit_status": 1, "checkpoints": ["checkpoint-600", "checkpoint-700"]}
    files = {
        "session-limit.json": json.dumps(limit).encode(),
        "runs/r1/config.yaml": b"x: 1\n",
        "checkpoints/checkpoint-700/adapter_config.json": b"{}",
    }
    serve_output(api, files)
    assert kaggle.main(["fetch", f"{KERNEL}/5", "--out", "fetched"]) == 75  # EX_TEMPFAIL: continue with --resume
    err = capsys.readouterr().err
    assert "stopped before Kaggle's 12-hour session limit (newest checkpoint checkpoint-700)" in err
    assert f"--kernel {KERNEL} --resume --wait" in err


def test_output_without_a_complete_run(creds, api, capsys):
    answer(api, "GetKernelSessionStatus", {"status": "COMPLETE"})
    serve_output(api, {"runs/r1/config.yaml": b"x: 1\n", "checkpoints/checkpoint-6/adapter_config.json": b"{}"})
    assert kaggle.main(["fetch", f"{KERNEL}/5", "--out", "fetched"]) == 1
    assert "without a complete run folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The generated kernel file, run locally


def kernel_env(tmp_path: Path, working: Path, secrets: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    fakes = tmp_path / "fakes"
    fakes.mkdir(exist_ok=True)
    (fakes / "kaggle_secrets.py").write_text(FAKE_SECRETS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "KAGGLE_", "PYTHONPATH"))}
    env.update(
        PYTHONPATH=str(fakes),
        DIALOGSUM_WORKING_DIR=str(working),
        DIALOGSUM_INPUT_DIR=str(tmp_path / "input"),
        DIALOGSUM_SKIP_INSTALL="1",
        FAKE_KAGGLE_SECRETS=json.dumps(secrets or {}),
        HF_HUB_OFFLINE="1",
        **extra,
    )
    return env


def build_kernel(folder: Path, *extra: str) -> Path:
    assert kaggle.main(["--config", "test", "--kernel", KERNEL, "--dry-run", "--folder", str(folder), *extra]) == 0
    return folder / kernel_folder.CODE_FILE


class GatedModelInfo(http.server.BaseHTTPRequestHandler):
    """The Hub's model-info endpoint for a gated model, as the kernel asks it before anything is installed."""

    def do_GET(self):  # noqa: N802
        body = json.dumps({"id": self.path.removeprefix("/api/models/"), "gated": "manual"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_kernel_stops_in_seconds_without_the_secret_for_a_gated_model(creds, tmp_path):
    code = build_kernel(tmp_path / "k", "model.name=meta-llama/Llama-3.2-3B-Instruct")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GatedModelInfo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = kernel_env(tmp_path, tmp_path / "w", HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
        env.pop("DIALOGSUM_SKIP_INSTALL")  # it must stop before pip would run
        done = subprocess.run([sys.executable, str(code)], env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert done.returncode == 4, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: meta-llama/Llama-3.2-3B-Instruct is gated and no Kaggle secret HF_TOKEN is attached")
    assert f"https://www.kaggle.com/code/{KERNEL}/edit" in last and "Add-ons > Secrets" in last
    assert "installing requirements" not in done.stdout


def test_kernel_reads_the_attached_secret_without_printing_it(tmp_path, monkeypatch):
    """The kernel module in-process, with the stand-in kaggle_secrets on sys.path."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "kaggle_secrets.py").write_text(FAKE_SECRETS)
    monkeypatch.syspath_prepend(str(fakes))
    monkeypatch.setenv("FAKE_KAGGLE_SECRETS", json.dumps({"HF_TOKEN": PLANTED_HF + "\n"}))
    from launch.kaggle import kernel as kaggle_kernel

    assert kaggle_kernel.hf_token("meta-llama/Llama-3.2-3B-Instruct", KERNEL) == PLANTED_HF
    assert kaggle_kernel.hf_token("builtin:tiny-llama", KERNEL) is None


CHILD = """
import signal, sys, time
from pathlib import Path

def stop(signum, frame):
    Path("got-sigterm").write_text("checkpoint")
    sys.exit(1)

signal.signal(signal.SIGTERM, stop)
Path("ready").write_text("")
time.sleep(60)
"""


def test_time_budget_stops_the_job_with_sigterm(tmp_path):
    """A real child process standing in for the job: it records SIGTERM the way the job checkpoints on it."""
    import signal
    import time

    from launch.kaggle.kernel import run_job

    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    status, stopped = run_job([sys.executable, "-c", CHILD], tmp_path, dict(os.environ), limit_s=3)
    assert (status, stopped) == (1, True) and time.monotonic() - started < 30
    assert (tmp_path / "got-sigterm").read_text() == "checkpoint"
    assert signal.getsignal(signal.SIGTERM) == before
    status, stopped = run_job([sys.executable, "-c", "print('done')"], tmp_path, dict(os.environ), limit_s=60)
    assert (status, stopped) == (0, False)


def test_requirements_install_keeps_the_installed_torch(tmp_path, monkeypatch, capsys):
    """The real pip of this environment, offline: requirements that are already satisfied need no index."""
    from importlib.metadata import version

    from launch.kaggle.kernel import KernelError, install_requirements

    monkeypatch.delenv("DIALOGSUM_SKIP_INSTALL", raising=False)
    (tmp_path / "requirements.txt").write_text("pyyaml>=6\n")
    install_requirements(tmp_path)
    assert (tmp_path / "constraints.txt").read_text() == f"torch=={version('torch')}\n"
    assert f"torch stays: torch=={version('torch')}" in capsys.readouterr().out

    (tmp_path / "requirements.txt").write_text("./no-such-package-folder\n")
    with pytest.raises(KernelError, match="pip could not install the job's requirements"):
        install_requirements(tmp_path)


def test_two_gpus_run_the_job_under_torchrun(tmp_path, monkeypatch):
    from launch.kaggle.kernel import job_command, processes

    settings = {"run_name": "r"}
    monkeypatch.delenv("DIALOGSUM_NPROC", raising=False)
    assert processes(2) == 2 and processes(1) == 1 and processes(0) == 1
    two = job_command(tmp_path, settings, tmp_path / "w", 2)
    assert two[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert two[5:8] == ["-m", "job", "train"]
    one = job_command(tmp_path, settings, tmp_path / "w", 1)
    assert one[:4] == [sys.executable, "-m", "job", "train"] and one[4:] == two[8:]
    monkeypatch.setenv("DIALOGSUM_NPROC", "2")
    assert processes(0) == 2


def test_previous_checkpoints_are_found_where_kaggle_mounts_them(tmp_path):
    from launch.kaggle.kernel import previous_checkpoints

    assert previous_checkpoints(tmp_path, "dialogsum-test") is None
    nested = tmp_path / "notebooks" / "alice" / "dialogsum-test" / "checkpoints" / "checkpoint-6"
    nested.mkdir(parents=True)
    assert previous_checkpoints(tmp_path, "dialogsum-test") == nested.parent
    direct = tmp_path / "dialogsum-test" / "checkpoints" / "checkpoint-3"
    direct.mkdir(parents=True)
    assert previous_checkpoints(tmp_path, "dialogsum-test") == direct.parent


def run_until_checkpoint_then_stop(code: Path, env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run the kernel file; once the job has saved its first checkpoint, send the kernel SIGTERM as Kaggle does at
    its session limit. Returns (exit status, the job's stderr)."""
    import signal

    with open(log, "w") as out:
        kernel = subprocess.Popen([sys.executable, str(code)], env=env, stdout=out, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in kernel.stderr:
            lines.append(line)
            if "checkpoint saved:" in line and kernel.poll() is None:
                kernel.send_signal(signal.SIGTERM)
        return kernel.wait(timeout=300), "".join(lines)


@pytest.mark.slow
def test_generated_kernel_stops_at_the_limit_and_a_resumed_version_completes_the_run(creds, tmp_path):
    """The file we push, run with Python on the `test` preset as Kaggle runs it (KAGGLE_KERNEL_RUN_TYPE set, the
    HF_TOKEN secret attached through the stand-in kaggle_secrets). Version 1 is stopped with SIGTERM after its first
    checkpoint, as at Kaggle's session limit; version 2, pushed with --resume, gets version 1's output mounted as
    its input, continues from the newest checkpoint and completes the run folder."""
    secrets = {"HF_TOKEN": PLANTED_HF}
    first = build_kernel(tmp_path / "k1")
    working = tmp_path / "w1"
    env = kernel_env(tmp_path, working, secrets, KAGGLE_KERNEL_RUN_TYPE="Batch")
    status, stderr = run_until_checkpoint_then_stop(first, env, tmp_path / "k1.log")
    stdout = (tmp_path / "k1.log").read_text()
    assert status == 0, stderr[-3000:]
    assert "SIGTERM: stopping the job" in stdout and "SIGTERM received: saving a checkpoint" in stderr
    limit = json.loads((working / "session-limit.json").read_text())
    assert "checkpoint-6" in limit["checkpoints"] and limit["run_name"].startswith("dialogsum-test-")
    assert not list(working.glob("runs/*/manifest.json"))
    newest = limit["checkpoints"][-1]

    # Version 2: Kaggle mounts version 1's output read-only under /kaggle/input/<slug>/.
    mounted = tmp_path / "input" / "dialogsum-test"
    shutil.copytree(working, mounted)
    second = build_kernel(tmp_path / "k2", "--resume")
    env = kernel_env(tmp_path, tmp_path / "w2", secrets, KAGGLE_KERNEL_RUN_TYPE="Batch")
    done = subprocess.run([sys.executable, str(second)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resume: copied {mounted / 'checkpoints'}" in done.stdout
    assert re.search(rf"resuming from checkpoint \S*w2/checkpoints/{newest}\b", done.stderr)
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert run_dir == tmp_path / "w2" / "runs" / limit["run_name"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["platform"] == "kaggle"
    assert {"metrics.json", "predictions.jsonl", "report.md", "config.yaml"} <= {f["path"] for f in manifest["files"]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["resumed_from"].endswith(newest) and metrics["train"]["steps"] == 12

    assert "Hugging Face token: from Kaggle secret HF_TOKEN" in done.stderr  # the job read the stand-in secret
    assert PLANTED_HF not in stdout + stderr + done.stdout + done.stderr
    for path in [p for p in tmp_path.glob("w*/**/*") if p.is_file()]:
        assert PLANTED_HF.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_generated_kernel_with_two_processes_runs_under_torchrun(creds, tmp_path):
    """As on Kaggle's T4 x2, with two CPU processes (gloo) standing in for the two GPUs."""
    code = build_kernel(tmp_path / "k")
    env = kernel_env(tmp_path, tmp_path / "w", DIALOGSUM_NPROC="2")
    done = subprocess.run([sys.executable, str(code)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "training processes: 2 under torchrun" in done.stdout
    assert "running: -m torch.distributed.run --standalone --nproc_per_node=2 -m job train" in done.stdout
    assert "x 2 processes" in done.stderr  # the effective batch counts both ranks
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert done.stdout.count(str(run_dir)) == 1  # rank 0 alone reports (and writes) the run
    assert [p.name for p in (tmp_path / "w" / "runs").iterdir()] == [run_dir.name]
    assert (run_dir / "manifest.json").is_file()


def test_ctrl_c_while_following_says_the_kernel_keeps_running(creds, api, capsys):
    """Ctrl-C arrives while the client waits for Kaggle's answer (raised at the HTTP edge): exit 130, one plain line."""

    def interrupted(request):
        raise KeyboardInterrupt

    api.add_callback(responses.POST, f"{API}/GetKernelSessionStatus", callback=interrupted)
    assert kaggle.main(["status", f"{KERNEL}/9", "--wait"], poll_interval=0) == 130
    assert capsys.readouterr().err == (
        "interrupted (the kernel keeps running on Kaggle; follow it again with `status --wait`)\n"
    )
