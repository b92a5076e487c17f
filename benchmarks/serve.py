"""`python -m benchmarks serve`: `job serve`'s dynamic batching against one request at a time, in the same run.

A finished `test`-preset run (the built-in tiny Llama in 4-bit, trained once into benchmarks/.work) is served twice
in this process on 127.0.0.1: batches of up to --batch-size dialogues gathered for up to 20 ms, then batches of one.
1, 8 and 32 concurrent clients each send one-dialogue JSON requests back to back; throughput (summaries/s) and p50/p95
latency per arm and client count, and the ratio of the throughputs at each count, go to benchmarks/results.json
under `serve`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import common, report

log = logging.getLogger("benchmarks.serve")

CLIENTS = (1, 8, 32)
RUN_NAME = "serve-bench"


def finished_run() -> Path:
    """The run to serve, trained once with the `test` preset (about a minute on 2 cores) and reused."""
    parent = common.WORK_DIR / "runs"
    run_dir = parent / RUN_NAME
    if not (run_dir / "manifest.json").is_file():
        log.info("training the run to serve into %s", run_dir)
        cmd = [sys.executable, "-m", "job", "train", "--config", "test", f"output.uri={parent}"]
        subprocess.run(cmd + [f"output.run_name={RUN_NAME}"], check=True, capture_output=True)
    return run_dir


def dialogues(n: int) -> list[str]:
    return [example.dialogue for example in common.rows(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(url: str, texts: list[str], clients: int, per_client: int, max_new_tokens: int) -> dict:
    """`clients` threads, each sending `per_client` requests one after another."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=600) as http:
            for j in range(per_client):
                body = {"dialogue": texts[(k * per_client + j) % len(texts)], "max_new_tokens": max_new_tokens}
                start = time.perf_counter()
                r = http.post(f"{url}/invocations", json=body)
                took = time.perf_counter() - start
                with lock:
                    (latencies.append(took) if r.status_code == 200 else errors.append(r.text))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(wall, 3),
        "summaries_per_second": round(len(latencies) / wall, 3),
        "p50_seconds": round(statistics.median(latencies), 3),
        "p95_seconds": round(percentile(latencies, 0.95), 3),
    }


def run(batch_size: int = 32, per_client: int = 2, max_new_tokens: int = 24, clients=CLIENTS) -> dict:
    from job import serve

    run_dir = finished_run()
    texts = dialogues(max(clients) * per_client)
    arms = {"dynamic_batching": (batch_size, serve.MAX_WAIT_MS / 1000), "one_at_a_time": (1, 0.0)}
    results: dict = {}
    for arm, (size, wait) in arms.items():
        with serve.InThread(run_dir, batch_size=size, max_wait_s=wait) as server:
            load(server.url, texts, 1, 1, max_new_tokens)  # warm-up
            results[arm] = []
            for n in clients:
                # at least 16 requests per count, so one client's figures are not a single sample
                figures = load(server.url, texts, n, max(per_client, -(-16 // n)), max_new_tokens)
                figures["batches"] = server.service.batcher.batches
                log.info("%s, %d clients: %.2f summaries/s", arm, n, figures["summaries_per_second"])
                results[arm].append(figures)
    ratios = {
        str(b["clients"]): round(b["summaries_per_second"] / o["summaries_per_second"], 2)
        for b, o in zip(results["dynamic_batching"], results["one_at_a_time"])
    }
    return {
        "run": "test preset (builtin:tiny-llama, 4-bit NF4, LoRA)",
        "batch_size": batch_size,
        "max_wait_ms": serve.MAX_WAIT_MS,
        "max_new_tokens": max_new_tokens,
        **results,
        "throughput_ratio": ratios,
        "serve_speedup_32_clients": ratios.get("32"),
    }


def table(record: dict) -> str:
    rows = [("clients", "dynamic batching", "one at a time", "ratio")]
    for b, o in zip(record["dynamic_batching"], record["one_at_a_time"]):
        rows.append(
            (
                str(b["clients"]),
                f"{b['summaries_per_second']:.2f}/s, p50 {b['p50_seconds']:.2f} s, p95 {b['p95_seconds']:.2f} s",
                f"{o['summaries_per_second']:.2f}/s, p50 {o['p50_seconds']:.2f} s, p95 {o['p95_seconds']:.2f} s",
                f"{record['throughput_ratio'][str(b['clients'])]:.2f}x",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str]) -> int:
    from benchmarks.__main__ import DEFAULT_OUT, machine_kind

    p = argparse.ArgumentParser(prog="python -m benchmarks serve", description=__doc__)
    p.add_argument("--batch-size", type=int, default=32, help="the batched arm's largest batch")
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    record = {"date": common.now(), **run(args.batch_size, args.per_client, args.max_new_tokens)}
    report.merge(args.out, machine_kind(), {"serve": record})
    print(table(record))
    print(f"\nratio at 32 clients: {record['serve_speedup_32_clients']:.2f}x")
    print(f"written to {args.out} under {machine_kind()!r} (serve)")
    print(json.dumps(record["throughput_ratio"]))
    return 0
