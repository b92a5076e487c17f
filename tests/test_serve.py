"""`python -m job serve`: SageMaker's inference contract on the shared finished run, served in-process by uvicorn on
127.0.0.1 (a free port), with the real model, batching and limits; SIGTERM through a real `python -m job serve`
process; the page in headless Chromium; an s3:// run through moto."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from job import runtime, serve
from tests.conftest import REPO, job_env, run_job_here

TRAIN_SPLIT = REPO / "job" / "builtin" / "train.jsonl"


def predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def wait_ready(url: str, timeout: float = 180, proc: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{url}/ping", timeout=5)
            if r.status_code == 200:
                return r.json()
            assert r.status_code == 503 and r.json()["status"] == "loading", r.text
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/ping did not answer 200 within {timeout} s")


def invoke(url: str, body, content_type: str = "application/json", timeout: float = 300) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{url}/invocations", content=data, headers={"Content-Type": content_type}, timeout=timeout)


@pytest.fixture(scope="module")
def live(trained_run):
    with serve.InThread(trained_run.dir) as running:
        yield running


def test_ping_and_invocations_follow_the_contract(live, trained_run):
    """JSON in and out, ids echoed, the base model by switching the adapter off, JSON Lines in order: each summary
    the one the run's evaluation wrote to predictions.jsonl."""
    ping = httpx.get(f"{live.url}/ping").json()
    assert ping["status"] == "ok" and ping["run"] == "shared" and ping["dtype"] == "float32" and ping["base"]
    rows = predictions(trained_run.dir)
    one = invoke(live.url, {"dialogue": rows[0]["dialogue"], "id": "x"}).json()
    assert set(one) == {"summaries", "model", "dtype", "run", "seconds"}
    assert (one["model"], one["dtype"], one["run"]) == ("finetuned", "float32", "shared")
    [answer] = one["summaries"]
    assert answer["id"] == "x" and answer["summary"] == rows[0]["finetuned"]
    assert answer["prompt_tokens"] > 0 and 0 < answer["new_tokens"] <= 24

    many = invoke(live.url, {"dialogues": [r["dialogue"] for r in rows], "model": "base"}).json()
    assert many["model"] == "base"
    assert [s["id"] for s in many["summaries"]] == list(range(len(rows)))
    assert [s["summary"] for s in many["summaries"]] == [r["base"] for r in rows]

    lines = "".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows)
    r = invoke(live.url, lines, "application/jsonlines")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/jsonlines")
    out = [json.loads(line) for line in r.text.splitlines()]
    assert [o["id"] for o in out] == [row["id"] for row in rows]
    assert [o["summary"] for o in out] == [row["finetuned"] for row in rows]
    assert all(o["model"] == "finetuned" and o["new_tokens"] > 0 for o in out)


def test_64_concurrent_requests_get_job_predicts_summaries(live, trained_run, tmp_path):
    """64 clients at once, one dialogue each: every answer arrives, equal to `job predict`'s summary, and the
    server generated them in shared batches."""
    unique = dict.fromkeys(json.loads(line)["dialogue"] for line in TRAIN_SPLIT.read_text().splitlines())
    dialogues = list(unique)[:64]
    assert len(dialogues) == 64
    source = tmp_path / "dialogues.jsonl"
    source.write_text("".join(json.dumps({"id": str(k), "dialogue": d}) + "\n" for k, d in enumerate(dialogues)))
    done = run_job_here(
        *[
            "predict",
            "--run",
            str(trained_run.dir),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--max-new-tokens",
            "8",
        ],  # fmt: skip
        env=job_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = [json.loads(line)["summary"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    before = live.service.batcher.batches
    with ThreadPoolExecutor(64) as pool:
        answers = list(
            pool.map(lambda k: invoke(live.url, {"dialogue": dialogues[k], "id": k, "max_new_tokens": 8}), range(64))
        )
    assert [a.status_code for a in answers] == [200] * 64
    got = [a.json()["summaries"][0] for a in answers]
    assert [g["id"] for g in got] == list(range(64))
    assert [g["summary"] for g in got] == expected
    assert live.service.batcher.batches - before < 64  # batched together, not one by one


BIG = "#Person1#: " + "word " * (7 * 2**20 // 5)

J, JL = "application/json", "application/jsonlines"
BAD = [  # docs/bad-inputs.md#serving, word for word
    ("malformed JSON", J, b'{"dialogue": "hi"', 400,
     "not JSON (Expecting ',' delimiter at line 1 column 18); send a JSON object"),
    ("not an object", J, b'["hi"]', 400, "a JSON object is expected, got list"),
    ("no dialogue", J, b'{"text": "hi"}', 400, 'no dialogue: send {"dialogue": "..."} or {"dialogues": ["...", ...]}'),
    ("empty dialogue", J, b'{"dialogue": "  "}', 400, "dialogue is empty; send the dialogue's text"),
    ("dialogue not text", J, b'{"dialogue": 42}', 400, "dialogue must be a string, got int; send the dialogue as text"),
    ("dialogues not a list", J, b'{"dialogues": "hi"}', 400, "dialogues must be a non-empty list of strings"),
    ("an empty one in dialogues", J, b'{"dialogues": ["hi", ""]}', 400, "dialogues[1] is empty; send the dialogue's text"),
    ("ids of another length", J, b'{"dialogues": ["hi"], "ids": [1, 2]}', 400,
     "ids must be a list as long as dialogues (1)"),
    ("dialogue and dialogues", J, b'{"dialogue": "a", "dialogues": ["b"]}', 400,
     "give either dialogue or dialogues, not both"),
    ("too many dialogues", J, json.dumps({"dialogues": ["hi"] * 33}).encode(), 400,
     "33 dialogues in one request; at most 32 (split them, or use application/jsonlines for larger batches)"),
    ("max_new_tokens not a number", J, b'{"dialogue": "a", "max_new_tokens": "9"}', 400,
     'max_new_tokens must be a whole number from 1 to 512, got "9"'),
    ("max_new_tokens out of range", J, b'{"dialogue": "a", "max_new_tokens": 513}', 400,
     "max_new_tokens must be a whole number from 1 to 512, got 513"),
    ("unknown model", J, b'{"dialogue": "a", "model": "gpt"}', 400, 'model must be "finetuned" or "base", got "gpt"'),
    ("not UTF-8", J, b'{"dialogue": "caf\xe9"}', 400, "the body is not UTF-8 (byte 17); encode the request as UTF-8"),
    ("body over 6 MB", J, json.dumps({"dialogue": BIG}).encode(), 413,
     "the body is over 6 MB; send fewer dialogues per request"),
    ("no Content-Type", "", b'{"dialogue": "a"}', 415,
     "Content-Type (none) is not served; send application/json or application/jsonlines"),
    ("another Content-Type", "text/csv", b"a,b", 415,
     "Content-Type text/csv is not served; send application/json or application/jsonlines"),
    ("JSON Lines: a line not JSON", JL, b'{"dialogue": "a"}\nnope\n', 400,
     "line 2: not JSON (Expecting value at line 1 column 1); send a JSON object"),
    ("JSON Lines: a blank line", JL, b'{"dialogue": "a"}\n\n{"dialogue": "b"}', 400,
     "line 2: empty; send one JSON object per line"),
    ("JSON Lines: no dialogue", JL, b'{"id": 1}\n', 400, 'line 1: no dialogue: send {"id": ..., "dialogue": "..."}'),
    ("JSON Lines: too many lines", JL, b'{"dialogue": "a"}\n' * 1001, 400,
     "1001 lines in one request; at most 1000 (lower MaxPayloadInMB or split)"),
    ("JSON Lines: empty body", JL, b"", 400, "the body holds no lines; send one JSON object per line"),
]  # fmt: skip


def test_every_bad_input_gets_its_4xx_and_the_server_keeps_serving(live):
    good = {"dialogue": "#Person1#: Is the shop open?\n#Person2#: Until nine.", "max_new_tokens": 4}
    for what, content_type, body, status, message in BAD:
        headers = {"Content-Type": content_type} if content_type else {}
        r = httpx.post(f"{live.url}/invocations", content=body, headers=headers, timeout=60)
        assert r.status_code == status, (what, r.text)
        assert r.json() == {"error": message}, what
        assert invoke(live.url, good).status_code == 200, what
    r = httpx.get(f"{live.url}/invocations")
    assert (r.status_code, r.json()) == (
        405, {"error": "GET /invocations is not served; see GET /ping and POST /invocations"}
    )  # fmt: skip
    r = httpx.get(f"{live.url}/nowhere")
    assert (r.status_code, r.json()) == (
        404, {"error": "no /nowhere here; the server answers GET /ping, POST /invocations and GET /"}
    )  # fmt: skip


def test_loading_and_runs_without_an_adapter_get_their_own_answers(trained_run):
    """Before the model is ready: /ping and /invocations answer 503; a model that fails to load says so on /ping.
    `model: base` where there is no adapter to switch off (a full run) is refused."""
    from starlette.testclient import TestClient

    from job import server
    from job.errors import ConfigInputError

    release = threading.Event()

    def load():
        release.wait(30)
        raise ConfigInputError("no weights")

    _, served = serve.describe(trained_run.dir)
    service = server.Service(served, load, server.Limits(6 * 2**20, 32, 1000, 512, 0.0))
    with TestClient(server.create_app(service)) as client:
        assert client.get("/ping").status_code == 503 and client.get("/ping").json()["status"] == "loading"
        r = client.post("/invocations", json={"dialogue": "a"})
        assert (r.status_code, r.json()) == (
            503,
            {"error": "the model is still loading; retry once GET /ping answers 200"},
        )
        release.set()
        deadline = time.monotonic() + 10
        while service.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ping").json()["status"] == "failed"
    served.method, served.adapter = "full", False
    with pytest.raises(server.BadRequest) as refused:
        server.parse_json('{"dialogue": "a", "model": "base"}', served, service.limits)
    assert (refused.value.status, str(refused.value)) == (
        400, 'model "base": this server has no adapter to switch off (full run); leave out model'
    )  # fmt: skip


def test_ping_answers_within_2_s_during_a_long_batch(trained_run):
    """Generation runs on the worker thread: /ping stays quick while a full batch generates 160 tokens each."""
    rows = predictions(trained_run.dir)
    with serve.InThread(trained_run.dir, batch_size=8, max_wait_s=0.0) as running:
        body = {"dialogues": [r["dialogue"] for r in rows] * 2, "max_new_tokens": 160}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(invoke, running.url, body)
            pings = []
            while running.service.batcher.batches == 0 and not pending.done():  # the first batch generates
                took = time.perf_counter()
                r = httpx.get(f"{running.url}/ping", timeout=10)
                pings.append(time.perf_counter() - took)
                assert r.status_code == 200 and pings[-1] < 2, pings
                time.sleep(0.2)
            assert pending.result().status_code == 200
        assert len(pings) >= 2, "the batch ended before /ping was asked twice; make it longer"


def test_sigterm_during_a_request_answers_it_then_exits(trained_run):
    """A real `python -m job serve` that receives SIGTERM as its first batch starts generating (the
    sigterm_generate fault, so the request is surely in flight): the request still gets its summaries, then
    the server ends as SIGTERM ends the job (143) and the port closes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", "serve", "--run", str(trained_run.dir), "--port", "0"],
        env=job_env(DIALOGSUM_FAULTS="sigterm_generate"),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url, lines = None, []
        for line in proc.stderr:
            lines.append(line)
            if "serving shared on http://" in line:
                url = line.split(" on ", 1)[1].split()[0]
                break
        assert url, "".join(lines)[-3000:]
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        wait_ready(url, proc=proc)
        rows = predictions(trained_run.dir)[:2]
        answer = invoke(url, {"dialogues": [r["dialogue"] for r in rows], "ids": ["a", "b"]})
        assert answer.status_code == 200, answer.text
        assert [s["summary"] for s in answer.json()["summaries"]] == [r["finetuned"] for r in rows]
        assert proc.wait(120) == 143, "".join(lines)[-3000:]
        assert "injecting fault sigterm_generate" in "".join(lines)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/ping", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_refuses_an_incomplete_run_or_one_without_weights(trained_run, tmp_path, monkeypatch):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained_run.dir, unfinished, ignore=shutil.ignore_patterns("tensorboard", "base_model"))
    (unfinished / "manifest.json").unlink()
    done = run_job_here(*["serve", "--run", str(unfinished)], env=job_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error (config): --run {unfinished} has no manifest.json: the run did not finish (or its upload did not); "
        "resume or publish it, or pass a finished run"
    )
    empty = tmp_path / "empty"
    shutil.copytree(trained_run.dir, empty, ignore=shutil.ignore_patterns("tensorboard", "base_model", "adapter"))
    done = run_job_here(*["serve", "--run", str(empty)], env=job_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error (config): --run {empty} holds neither an adapter (adapter/) nor a model (model/): nothing to serve; "
        "pass the folder of a finished run"
    )
    done = run_job_here(*["serve", "--run", str(trained_run.dir), "--merged"], env=job_env())
    assert done.returncode == 2 and "--merged: " in done.stderr and "has no merged model" in done.stderr
    monkeypatch.setattr(
        runtime, "OPT_ML", tmp_path / "opt_ml"
    )  # SM_MODEL_DIR says SageMaker: its failure file goes here
    done = run_job_here(*["serve"], env={**job_env(), "SM_MODEL_DIR": str(tmp_path / "nothing")})
    assert (tmp_path / "opt_ml" / "output" / "failure").is_file()
    assert done.returncode == 2 and f"no --run given and {tmp_path / 'nothing'}" in done.stderr


def test_a_port_in_use_is_one_line(trained_run):
    taken = serve.bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        done = run_job_here(*["serve", "--run", str(trained_run.dir), "--port", str(port)], env=job_env())
    finally:
        taken.close()
    assert done.returncode == 6
    assert f"error (resources): cannot listen on 127.0.0.1:{port} (Address already in use)" in done.stderr


def test_an_s3_run_is_fetched_as_its_manifest_lists_it(trained_run, tmp_path, monkeypatch):
    """moto in-process: the run's serving files come down and are checked; checkpoints and TensorBoard stay."""
    from moto import mock_aws

    from job.errors import ConfigInputError

    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="serve-runs")
        for path in trained_run.dir.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), "serve-runs", f"runs/shared/{path.relative_to(trained_run.dir)}")
        folder = serve.resolve_run("s3://serve-runs/runs/shared", tmp_path / "dl")
        assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "manifest.json").is_file()
        assert not (folder / "tensorboard").exists() and not (folder / "loss.png").exists()
        assert serve.describe(folder)[1].run == "shared"
        client.delete_object(Bucket="serve-runs", Key="runs/shared/manifest.json")
        with pytest.raises(ConfigInputError, match="s3://serve-runs/runs/shared has no manifest.json"):
            serve.resolve_run("s3://serve-runs/runs/shared", tmp_path / "dl2")


def chromium() -> tuple[str, str] | None:
    found = shutil.which("chromium"), shutil.which("chromedriver")
    return found if all(found) else None


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium and chromium-driver are not installed")
def test_the_page_shows_both_summaries_in_headless_chromium(live, trained_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_window_size(1280, 900)
        driver.get(live.url + "/")
        assert "ROUGE-1" in driver.find_element(By.TAG_NAME, "table").text
        Select(driver.find_element(By.ID, "sample")).select_by_value("0")
        driver.find_element(By.ID, "summarize").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "status").text == "done")
        row = predictions(trained_run.dir)[0]
        shown = "return document.getElementById(arguments[0]).textContent"
        assert driver.execute_script(shown, "finetuned") == row["finetuned"]
        assert driver.execute_script(shown, "base") == row["base"]
        shot = tmp_path / "serve-page.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 0
    finally:
        driver.quit()


def test_the_image_entrypoint_binds_serve_to_all_interfaces(tmp_path):
    """SageMaker reaches the container from outside: `serve` gets --host 0.0.0.0 unless it names a host; other
    commands pass through unchanged (a stand-in `job` package, first on the path, prints what it was given)."""
    stand_in = tmp_path / "job"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("")
    (stand_in / "runtime.py").write_text("def exit_on_sigterm():\n    pass\n")
    (stand_in / "__main__.py").write_text("import sys\nprint(sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    entrypoint = [sys.executable, str(REPO / "container" / "entrypoint.py")]
    for args, seen in (
        (["serve"], "['serve', '--host', '0.0.0.0']"),
        (["serve", "--run", "r", "--host=127.0.0.1"], "['serve', '--run', 'r', '--host=127.0.0.1']"),
        (["train", "--host"], "['train', '--host']"),
    ):
        done = subprocess.run(entrypoint + args, env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip() == seen, done.stderr


def test_an_hf_run_is_laid_out_as_a_run_folder(trained_run, tmp_path, monkeypatch):
    """The Hub is faked at `huggingface_hub.snapshot_download` (no local stand-in serves downloads): the fake writes
    the repo as `python -m job publish` lays it out (job.hub.repo_files); the server sees a run folder that loads
    like the local one."""
    import huggingface_hub

    from job import hub, publish
    from job.errors import ConfigInputError

    files = hub.repo_files(publish.run_files(trained_run.dir))
    asked = []

    def fake_snapshot(repo_id, revision=None, local_dir=None, **kwargs):
        asked.append((repo_id, revision))
        for local, rel in files:
            if not (repo_id.endswith("broken") and rel == "metrics.json"):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(local, Path(local_dir) / rel)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    folder = serve.resolve_run("hf://acme/dialogsum-run@v1", tmp_path / "dl")
    assert asked == [("acme/dialogsum-run", "v1")]
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert (folder / "base_model" / "config.json").is_file()
    cfg, served = serve.describe(folder)
    assert served.run == "shared" and served.adapter and cfg.method == "qlora"
    with pytest.raises(ConfigInputError, match="hf://acme/broken holds no adapter or model with its metrics.json"):
        serve.resolve_run("hf://acme/broken", tmp_path / "dl2")
