"""Publishing runs to the Hugging Face Hub, through the real `huggingface_hub` client, against a local HTTP stand-in
of the Hub's API (`HF_ENDPOINT`): repo creation, README validation, preupload and the commit endpoint, recording what
arrives. The stand-in asks for every file as a regular (base64) blob, so no LFS or Xet storage is involved."""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from job import config as config_mod
from job import destination, hub, publish
from job.errors import AuthError, PublishError
from tests.conftest import job_env, run_job
from tests.test_publish import make_run

TOKEN = "hf_hubTestToken0123456789abcdefgh"  # PLANTED: a fake token the tests look for


@dataclass
class Commit:
    repo: str
    summary: str
    description: str
    files: dict[str, bytes]
    authorization: str | None


@dataclass
class HubStandIn:
    """Records repos created and commits received; `fail_commits` answers that many commits with `fail_status`."""

    url: str = ""
    created: list[dict] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_commits: int = 0
    fail_status: int = 503
    echo_authorization: bool = False  # a careless server that quotes the request's credentials in its errors

    def start(self) -> ThreadingHTTPServer:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                stand_in.requests.append(("GET", path))
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if path.startswith("/api/models/") and path.endswith("/auth-check/write"):
                    repo = path.removeprefix("/api/models/").removesuffix("/auth-check/write")
                    if not any(f"{c['organization']}/{c['name']}" == repo for c in stand_in.created):
                        return self._json(404, {"error": "Repository not found"}, error_code="RepoNotFound")
                    return self._json(200, {})
                if path != "/api/whoami-v2":
                    return self._json(404, {"error": f"no such endpoint {path}"})
                if token.startswith("hf_invalid"):
                    return self._json(401, {"error": "Invalid credentials in Authorization header"})
                role = "read" if token.startswith("hf_read") else "write"
                orgs = [{"name": "team", "roleInOrg": "write"}]
                return self._json(
                    200, {"type": "user", "name": "alice", "orgs": orgs, "auth": {"accessToken": {"role": role}}}
                )

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                stand_in.requests.append(("POST", path))
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    repo = f"{payload['organization']}/{payload['name']}"
                    if any(f"{c['organization']}/{c['name']}" == repo for c in stand_in.created):
                        return self._json(
                            409, {"error": "You already created this model repo", "url": f"{stand_in.url}/{repo}"}
                        )
                    stand_in.created.append(payload)
                    return self._json(200, {"url": f"{stand_in.url}/{repo}"})
                if path == "/api/validate-yaml":
                    yaml.safe_load(json.loads(body)["content"].split("---")[1])  # the card's metadata parses
                    return self._json(200, {"errors": [], "warnings": []})
                if path.endswith("/preupload/main"):
                    files = json.loads(body)["files"]
                    answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._json(200, {"files": answer})
                if path.endswith("/commit/main"):
                    if stand_in.fail_commits:
                        stand_in.fail_commits -= 1
                        echo = f" for {self.headers.get('Authorization')}" if stand_in.echo_authorization else ""
                        return self._json(stand_in.fail_status, {"error": "injected" + echo})
                    return self._commit(path.removeprefix("/api/models/").removesuffix("/commit/main"), body)
                return self._json(404, {"error": f"no such endpoint {path}"})

            def _commit(self, repo: str, body: bytes):
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(x["value"] for x in lines if x["key"] == "header")
                files = {
                    x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"
                }
                auth = self.headers.get("Authorization")
                stand_in.commits.append(Commit(repo, header["summary"], header["description"], files, auth))
                oid = f"{len(stand_in.commits):040x}"
                return self._json(200, {"commitUrl": f"{stand_in.url}/{repo}/commit/{oid}", "commitOid": oid})

            def _json(self, status: int, obj: dict, error_code: str | None = None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                if error_code:  # how the Hub names an error for its clients
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def stand_in(monkeypatch):
    import huggingface_hub.constants

    hub_server = HubStandIn()
    server = hub_server.start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub, "RETRY_DELAYS", (0.01, 0.01, 0.01))
    yield hub_server
    server.shutdown()


def llama_config(run: Path, uri: str, *overrides: str):
    """The run's config as a real Llama 3.2 run on DialogSum would have it (the card is written from it)."""
    return config_mod.resolve(
        str(run / "config.yaml"),
        [
            f"output.uri={uri}",
            "model.name=meta-llama/Llama-3.2-3B-Instruct",
            "data.dataset=knkarthick/dialogsum",
            *overrides,
        ],
    )


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_run_is_one_private_commit_with_adapter_at_root_metrics_report_and_card(tmp_path, stand_in):
    run = make_run(tmp_path, "run-a")
    cfg = llama_config(run, "hf://team/dialogsum-llama")
    assert publish.deliver(run, cfg) == "hf://team/dialogsum-llama"

    assert stand_in.created == [{"name": "dialogsum-llama", "organization": "team", "visibility": "private"}]
    (commit,) = stand_in.commits
    assert commit.repo == "team/dialogsum-llama"
    assert commit.summary == "Run run-a"
    assert commit.authorization == f"Bearer {TOKEN}"
    assert set(commit.files) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "base_model/config.json",
        "metrics.json",
        "report.md",
        "loss.png",
        "config.yaml",
        "README.md",
    }
    assert commit.files["adapter_model.safetensors"] == (run / "adapter/adapter_model.safetensors").read_bytes()
    assert commit.files["metrics.json"] == (run / "metrics.json").read_bytes()
    assert commit.files["README.md"].decode() != (run / "adapter/README.md").read_text()  # our card, not PEFT's


def test_model_card_metadata_and_licences(tmp_path, stand_in):
    run = make_run(tmp_path, "run-a")
    publish.deliver(run, llama_config(run, "hf://team/dialogsum-llama"))
    card = stand_in.commits[0].files["README.md"].decode()
    meta = front_matter(card)
    assert meta["base_model"] == "meta-llama/Llama-3.2-3B-Instruct"
    assert meta["datasets"] == ["knkarthick/dialogsum"]
    assert meta["library_name"] == "peft"
    assert meta["license"] == "llama3.2"
    (index,) = meta["model-index"]
    assert index["name"] == "dialogsum-llama"
    (result,) = index["results"]
    assert result["task"]["type"] == "summarization"
    assert result["dataset"] == {"name": "DialogSum", "type": "knkarthick/dialogsum", "split": "test"}
    assert [(m["type"], m["config"], m["name"], m["value"]) for m in result["metrics"]] == [
        ("rouge", "rouge1", "ROUGE-1", 0.4),
        ("rouge", "rouge2", "ROUGE-2", 0.4),
        ("rouge", "rougeL", "ROUGE-L", 0.4),
        ("rouge", "rougeLsum", "ROUGE-Lsum", 0.4),
    ]
    assert "CC BY-NC-SA 4.0" in card
    assert "Llama models carry Meta's own licence" in card
    # The card's table is the report's and the launchers' (job.tables): percent, interval, change from base.
    assert "| model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum |" in card
    assert "| base (zero-shot) | 10.00 |" in card and "| fine-tuned | 40.00 (30.00-50.00) |" in card
    assert "| change (fine-tuned - base) | +30.00 |" in card
    assert "quantization error" not in card  # no merged model in this run


def test_merged_model_is_published_and_the_card_warns_about_the_quantization_error(tmp_path, stand_in):
    run = tmp_path / "run-m"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "model.safetensors").write_bytes(os.urandom(1024))
    run = make_run(tmp_path, "run-m")  # the manifest now lists merged/ too
    publish.deliver(run, llama_config(run, "hf://team/merged", "output.merge=true"))
    commit = stand_in.commits[0]
    assert commit.files["merged/model.safetensors"] == (run / "merged/model.safetensors").read_bytes()
    assert "differs from the model that was trained and evaluated by the 4-bit quantization error" in " ".join(
        commit.files["README.md"].decode().split()
    )


def test_public_repo_when_configured(tmp_path, stand_in):
    run = make_run(tmp_path, "run-a")
    publish.deliver(run, llama_config(run, "hf://team/open", "output.private=false"))
    assert stand_in.created[0]["visibility"] == "public"


def test_existing_repo_gets_one_new_commit_per_run(tmp_path, stand_in):
    for name in ("run-a", "run-b"):
        run = make_run(tmp_path, name)
        publish.deliver(run, llama_config(run, "hf://team/repo"))
    assert [c.summary for c in stand_in.commits] == ["Run run-a", "Run run-b"]
    assert len(stand_in.created) == 1


def test_transient_hub_errors_are_retried(tmp_path, stand_in):
    stand_in.fail_commits = 2
    run = make_run(tmp_path, "run-a")
    publish.deliver(run, llama_config(run, "hf://team/repo"))
    assert len(stand_in.commits) == 1
    assert [p for _, p in stand_in.requests].count("/api/models/team/repo/commit/main") == 3


def test_permanent_hub_error_names_the_local_copy_and_the_publish_command(tmp_path, stand_in):
    stand_in.fail_commits, stand_in.fail_status = 99, 403
    run = make_run(tmp_path, "run-a")
    with pytest.raises(PublishError) as e:
        publish.deliver(run, llama_config(run, "hf://team/repo"))
    message = str(e.value)
    assert f"The complete run is at {run.resolve()}" in message
    assert f"finish with: python -m job publish {run.resolve()} --to hf://team/repo" in message
    assert [p for _, p in stand_in.requests].count("/api/models/team/repo/commit/main") == 1  # 403 is not retried


def test_no_token_is_a_publish_error_that_says_how_to_set_one(tmp_path, stand_in, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    run = make_run(tmp_path, "run-a")
    with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN"):
        publish.deliver(run, llama_config(run, "hf://team/repo"))
    assert stand_in.requests == []


def test_publish_cli_to_the_hub(tmp_path, stand_in):
    run = make_run(tmp_path, "run-a")
    env = job_env(HF_ENDPOINT=stand_in.url, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0")
    result = run_job("publish", str(run), "--to", "hf://team/cli-repo", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "hf://team/cli-repo"
    assert stand_in.commits[0].repo == "team/cli-repo"
    assert "from environment variable HF_TOKEN" in result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert [p for _, p in stand_in.requests].count("/api/whoami-v2") == 1  # one owner asks who the token is, once


def hub_check(monkeypatch, token: str) -> None:
    monkeypatch.setenv("HF_TOKEN", token)
    cfg = config_mod.resolve("test", ["output.uri=hf://team/repo", "output.run_name=r"])
    destination.check(cfg, token or None, destination.hub_account(token) if token else None)  # as train and publish do


@pytest.mark.parametrize("repo", ["team/new-repo", "team/existing"])
def test_preflight_asks_the_hub_who_the_token_is_once(stand_in, tmp_path, repo):
    from job import preflight

    stand_in.created.append({"organization": "team", "name": "existing"})
    cfg = config_mod.resolve("test", [f"output.uri=hf://{repo}", "output.run_name=r", f"output.local_dir={tmp_path}"])
    preflight.check(cfg, TOKEN)
    assert [p for _, p in stand_in.requests].count("/api/whoami-v2") == 1
    assert ("GET", f"/api/models/{repo}/auth-check/write") in stand_in.requests  # the write check still ran


def test_hub_destination_is_checked_before_training(stand_in, monkeypatch, tmp_path):
    hub_check(monkeypatch, "hf_write0000000000000")
    with pytest.raises(AuthError, match="token of alice is read-only; publishing to hf://team/repo needs a write"):
        hub_check(monkeypatch, "hf_read00000000000000")
    with pytest.raises(
        AuthError, match=r"token was refused by http://127\.0\.0\.1:\d+ \(invalid, expired or revoked\)"
    ):
        hub_check(monkeypatch, "hf_invalid00000000000")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(AuthError, match="needs a Hugging Face token with write access: set HF_TOKEN"):
        hub_check(monkeypatch, "")
    assert [p for m, p in stand_in.requests if m == "POST"] == []  # nothing created by a check


def test_card_for_a_local_base_model_and_other_data(tmp_path):
    run = make_run(tmp_path, "run-a")
    weights = tmp_path / "channel-model"
    weights.mkdir()
    cfg = config_mod.resolve(
        str(run / "config.yaml"), [f"model.name={weights}", f"data.dataset={tmp_path / 'mine.jsonl'}"]
    )
    card = hub.model_card(run, cfg, "team/local")
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta  # not hub ids: nothing to link
    assert (meta["license"], meta["license_name"]) == ("other", "base-model-license")
    assert "dialogsum" not in meta["tags"]
    assert "carries its own licence; check it before using or sharing this adapter" in card


def make_full_run(parent: Path, name: str, encoder_decoder: bool = False) -> Path:
    """A method=full run: the whole model in model/, no adapter."""
    run = parent / name
    model = {"model_type": "t5" if encoder_decoder else "llama", "is_encoder_decoder": encoder_decoder}
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text(json.dumps(model))
    (run / "model" / "model.safetensors").write_bytes(os.urandom(4096))
    (run / "model" / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    make_run(parent, name)
    for stale in ("adapter", "base_model"):  # make_run writes an adapter layout; a full run has neither
        for path in sorted((run / stale).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (run / stale).rmdir()
    cfg = config_mod.resolve(str(run / "config.yaml"), ["method=full"])
    (run / "config.yaml").write_text(cfg.to_yaml())
    publish.rundir.write_manifest(run, cfg, publish.rundir.now())
    return run


@pytest.mark.parametrize("encoder_decoder", [False, True], ids=["decoder", "encoder-decoder"])
def test_a_full_fine_tune_publishes_the_whole_model_with_a_card_that_says_so(tmp_path, stand_in, encoder_decoder):
    run = make_full_run(tmp_path, "run-f", encoder_decoder)
    publish.deliver(run, llama_config(run, "hf://team/full", "method=full"))
    (commit,) = stand_in.commits
    assert set(commit.files) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "report.md",
        "loss.png",
        "config.yaml",
        "README.md",
    }
    assert commit.files["model.safetensors"] == (run / "model/model.safetensors").read_bytes()
    card = commit.files["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == ("text2text-generation" if encoder_decoder else "text-generation")
    assert "adapter" not in card.lower() and "peft" not in card.lower() and "LoRA r=" not in card
    auto = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
    assert f'model = {auto}.from_pretrained("team/full")' in card
    assert "every weight of `meta-llama/Llama-3.2-3B-Instruct` fine-tuned" in card


def test_the_card_names_each_peft_method_and_its_loader(tmp_path):
    run = make_run(tmp_path, "run-a")
    lora = hub.model_card(run, llama_config(run, "hf://team/x", "method=lora"), "team/x")
    assert "A LoRA adapter for" in lora and "AutoPeftModelForCausalLM" in lora and "LoRA r=8 alpha=16" in lora
    soft = hub.model_card(run, llama_config(run, "hf://team/x", "method=prompt_tuning"), "team/x")
    assert "A prompt-tuning adapter (20 virtual tokens) for" in soft and "LoRA" not in soft
    assert front_matter(soft)["library_name"] == "peft"
