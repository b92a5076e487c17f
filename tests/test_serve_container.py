"""`docker run IMAGE serve` as SageMaker starts an inference container: the run mounted at /opt/ml/model, the
server on the container's port 8080 (bound to 0.0.0.0 by the image's entrypoint), reached through the engine's port
mapping on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.container_fixtures import exit_code, run
from tests.test_serve import invoke, predictions, wait_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.container
def test_image_serves_the_run_at_opt_ml_model(engine, built, trained_run, container_name):
    port = free_port()
    cmd = [engine, "run", "-d", "--name", container_name, "-p", f"127.0.0.1:{port}:8080"]
    cmd += ["-e", "HF_HUB_OFFLINE=1", "-v", f"{trained_run.dir}:/opt/ml/model:ro"]
    if "OMP_NUM_THREADS" in os.environ:  # the same torch threads as the host run it is compared with
        cmd += ["-e", f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"]
    cmd += [built, "serve"]
    started = run(cmd)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        ping = wait_ready(url, timeout=300)
    except AssertionError:
        logs = run([engine, "logs", container_name])
        raise AssertionError(logs.stdout[-3000:] + logs.stderr[-3000:]) from None
    assert ping["status"] == "ok" and ping["run"] == "shared" and ping["dtype"] == "float32"

    rows = predictions(trained_run.dir)
    answer = invoke(url, {"dialogues": [r["dialogue"] for r in rows], "ids": [r["id"] for r in rows]}).json()
    assert [s["id"] for s in answer["summaries"]] == [r["id"] for r in rows]
    assert [s["summary"] for s in answer["summaries"]] == [r["finetuned"] for r in rows]
    assert (answer["model"], answer["dtype"], answer["run"]) == ("finetuned", "float32", "shared")

    lines = "".join(json.dumps({"id": r["id"], "dialogue": r["dialogue"]}) + "\n" for r in rows)
    out = invoke(url, lines, "application/jsonlines")
    assert out.status_code == 200
    assert [json.loads(line)["id"] for line in out.text.splitlines()] == [r["id"] for r in rows]

    long = {"dialogues": [r["dialogue"] for r in rows] * 2, "max_new_tokens": 160}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(invoke, url, long)
        time.sleep(0.5)
        pings = []
        while not pending.done():
            took = time.perf_counter()
            assert httpx.get(f"{url}/ping", timeout=10).status_code == 200
            pings.append(time.perf_counter() - took)
            time.sleep(0.2)
        assert pending.result().status_code == 200
    assert pings and max(pings) < 2, pings

    assert run([engine, "stop", "-t", "60", container_name]).returncode == 0
    assert exit_code(engine, container_name) == 143
