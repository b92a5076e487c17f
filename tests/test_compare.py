"""`python -m job compare`: the table, CSV and chart from real runs of the `test` preset.

Two runs: the session's `trained_run` (qlora, as the job wrote it) and a copy of it turned into a `lora` run with
its own scores, in-context baselines and device (metrics.json edited, manifest re-sealed with the job's own code),
the kind of run folder the reader must handle. Local folders go through the real CLI; S3 is moto's server on
127.0.0.1 with the run uploaded by `python -m job publish`; the Hub is faked at `huggingface_hub.hf_hub_download`
(monkeypatched: no local stand-in of the Hub's file download is worth running for one file).
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml

from job import compare, rundir
from job import config as config_mod
from job.errors import ConfigInputError, DataError
from tests.conftest import job_env, run_job

BUCKET = "compare-runs"
LORA = "lora-run"


def _scores(r1: float, r2: float, rl: float, rlsum: float) -> dict:
    values = {"rouge1": r1, "rouge2": r2, "rougeL": rl, "rougeLsum": rlsum}
    return {
        **values,
        "multi_reference": {k: v + 0.08 for k, v in values.items()},
        "ci95": {k: [round(v - 0.02, 4), round(v + 0.02, 4)] for k, v in values.items()},
        "avg_words": 19.5,
        "length_ratio": 0.98,
        "hit_max_new_tokens": 0,
    }


LORA_SCORES = _scores(0.44, 0.20, 0.40, 0.41)
ONE_SHOT = _scores(0.45, 0.12, 0.25, 0.26)  # best ROUGE-1 of all, behind on ROUGE-L
FEW_SHOT = _scores(0.35, 0.15, 0.30, 0.31)


def make_lora_run(source: Path, parent: Path) -> Path:
    """A copy of a finished run as if trained with method=lora on an A10G for an hour, re-sealed by the job's code."""
    run = parent / LORA
    shutil.copytree(source, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["run"].update(
        name=LORA, method="lora", device="NVIDIA A10G", seconds=3600.0, started_at="2026-11-23T09:00:00+00:00"
    )
    metrics["finetuned"] = LORA_SCORES
    metrics["baselines"] = {"one_shot": ONE_SHOT, "few_shot": FEW_SHOT}
    metrics["train"].update(trainable_params=1000, total_params=726_400, seconds=1800.0)
    rundir.write_json(run / "metrics.json", metrics)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["method"] = "lora"
    config["output"]["run_name"] = LORA
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / rundir.MANIFEST).unlink()
    cfg = config_mod.resolve(str(run / "config.yaml"))
    rundir.write_manifest(run, cfg, metrics["run"]["started_at"])
    assert rundir.verify(run) == []
    return run


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory) -> SimpleNamespace:
    parent = tmp_path_factory.mktemp("compare-runs")
    lora = make_lora_run(trained_run.dir, parent)
    qlora_metrics = json.loads((trained_run.dir / "metrics.json").read_text())
    return SimpleNamespace(qlora=trained_run.dir, lora=lora, parent=parent, qlora_metrics=qlora_metrics)


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in `markdown`, as header -> cell."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def cell(scores: dict, metric: str) -> str:
    lo, hi = scores["ci95"][metric]
    return f"{100 * scores[metric]:.2f} ({100 * lo:.2f}-{100 * hi:.2f})"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------------------------
# Local run folders through the real CLI


def test_compare_local_runs_writes_table_csv_and_chart(runs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = run_job("compare", str(runs.qlora), str(runs.lora), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = table_rows(proc.stdout)
    # Ordered by ROUGE-L, best first (the tiny random model of the `test` preset scores near zero, so last). The
    # qlora run's base was 4-bit, the lora run's 16-bit: two zero-shot rows even though their scores agree.
    assert [r["method"] for r in rows][:3] == ["lora", "few-shot", "one-shot"]
    assert sorted(r["method"] for r in rows[3:]) == ["qlora", "zero-shot", "zero-shot"]
    by_method = {r["method"]: r for r in rows if r["method"] != "zero-shot"}
    zero = {r["run"]: r for r in rows if r["method"] == "zero-shot"}
    lora, qlora = by_method["lora"], by_method["qlora"]
    assert lora["run"] == LORA and lora["model"] == "`builtin:tiny-llama`"
    assert qlora["model"] == zero["shared"]["model"] == "`builtin:tiny-llama` (4-bit)"
    assert zero[LORA]["model"] == "`builtin:tiny-llama`"
    assert lora["trainable params"] == "1,000 (0.14%)"
    for metric, header in compare.METRIC_NAMES.items():
        assert lora[header] == cell(LORA_SCORES, metric)
        assert by_method["one-shot"][header] == cell(ONE_SHOT, metric)
        assert by_method["few-shot"][header] == cell(FEW_SHOT, metric)
        assert qlora[header] == cell(runs.qlora_metrics["finetuned"], metric)
        assert zero["shared"][header] == zero[LORA][header] == cell(runs.qlora_metrics["base"], metric)
    assert lora["train time"] == "30.0 min"
    assert lora["cost"] == "$1.41"  # one hour on an A10G at ml.g5.xlarge's $1.408/h from job/prices.json
    train = runs.qlora_metrics["train"]
    share = 100 * train["trainable_params"] / train["total_params"]
    assert qlora["trainable params"] == f"{train['trainable_params']:,} ({share:.2f}%)"
    assert qlora["train time"] == compare.duration(train["seconds"])
    assert qlora["cost"] == ""  # trained on the CPU: no price, said in a footnote
    assert zero["shared"]["trainable params"] == "0"
    assert (zero["shared"]["train time"], zero["shared"]["cost"], by_method["few-shot"]["run"]) == ("—", "—", LORA)
    assert "SageMaker on-demand training price of ml.g5.xlarge" in proc.stdout
    assert "No cost for shared (device `cpu`)" in proc.stdout and "--price-per-hour" in proc.stdout
    assert "6 dialogues of `builtin:synthetic` with 18 references; rouge_score 0.1.2, stemming on" in proc.stdout
    assert "(4-bit): the base model was loaded in 4-bit NF4" in proc.stdout

    document = (out / "comparison.md").read_text()
    assert proc.stdout.strip() in document and "![ROUGE-1, ROUGE-2 and ROUGE-L by variant](comparison.png)" in document

    with open(out / "comparison.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == compare.CSV_COLUMNS
    assert [(r["method"], r["runs"]) for r in records] == [(r["method"], r["run"]) for r in rows]
    csv_rows = {(r["method"], r["runs"]): r for r in records}
    csv_lora = csv_rows["lora", LORA]
    assert (csv_lora["variant"], csv_lora["device"], csv_lora["base_4bit"]) == ("finetuned", "NVIDIA A10G", "false")
    assert float(csv_lora["rougeL"]) == 0.40 and float(csv_lora["rougeL_low"]) == 0.38
    assert float(csv_lora["rougeL_high"]) == 0.42
    assert int(csv_lora["trainable_params"]) == 1000 and int(csv_lora["total_params"]) == 726_400
    assert float(csv_lora["price_per_hour"]) == 1.408 and float(csv_lora["cost_usd"]) == pytest.approx(1.408)
    assert float(csv_lora["train_seconds"]) == 1800.0 and float(csv_lora["job_seconds"]) == 3600.0
    csv_zero = csv_rows["zero-shot", "shared"]
    assert (csv_zero["variant"], csv_zero["base_4bit"], csv_zero["sources"]) == ("base", "true", str(runs.qlora))
    assert csv_zero["cost_usd"] == "" and csv_zero["train_seconds"] == ""
    assert float(csv_zero["rouge1"]) == runs.qlora_metrics["base"]["rouge1"]
    assert csv_rows["zero-shot", LORA]["base_4bit"] == "false"
    assert csv_rows["qlora", "shared"]["cost_usd"] == "" and csv_rows["qlora", "shared"]["device"] == "cpu"

    width, height = png_size(out / "comparison.png")
    assert width >= 700 and height >= 500


def test_metric_orders_rows_and_price_per_hour_prices_every_run(runs, tmp_path: Path, capsys) -> None:
    assert (
        compare.main(
            [str(runs.lora), str(runs.qlora), f"{runs.qlora}/", "--metric", "rouge1", "--price-per-hour", "2"]
            + ["--out", str(tmp_path)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert [r["method"] for r in rows][:3] == ["one-shot", "lora", "few-shot"]
    assert sorted(r["method"] for r in rows[3:]) == ["qlora", "zero-shot", "zero-shot"]
    seconds = runs.qlora_metrics["run"]["seconds"]
    by_method = {r["method"]: r for r in rows}
    assert by_method["qlora"]["cost"] == compare.money(2 * seconds / 3600)
    assert by_method["lora"]["cost"] == "$2.00"  # the flat price wins over the catalog's A10G price
    assert "$2/h (--price-per-hour) for every run" in printed and "No cost" not in printed
    assert "Rows ordered by ROUGE-1." in printed
    assert sum(r["method"] == "qlora" for r in rows) == 1  # the same run named twice is listed once
    with open(tmp_path / "comparison.csv", newline="") as f:
        costs = {r["method"]: r["cost_usd"] for r in csv.DictReader(f)}
    assert float(costs["lora"]) == 2.0 and float(costs["qlora"]) == pytest.approx(2 * seconds / 3600, abs=1e-6)


def _copy_run(source: Path, folder: Path, **run: str) -> dict:
    shutil.copytree(source, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["run"].update(name=folder.name, **run)
    rundir.write_json(folder / "metrics.json", metrics)
    return metrics


def test_shared_untrained_results_merge_and_differing_ones_stay_apart(runs, tmp_path: Path, capsys) -> None:
    """A second lora run of the same base (`twin`) shares the zero-shot and in-context rows; a run whose base scored
    differently (`other`) keeps its own zero-shot row and shares the baselines whose scores agree."""
    _copy_run(runs.lora, tmp_path / "twin", started_at="2026-11-23T10:00:00+00:00")
    metrics = _copy_run(runs.lora, tmp_path / "other", started_at="2026-11-23T11:00:00+00:00")
    metrics["base"] = _scores(0.27, 0.08, 0.21, 0.22)
    rundir.write_json(tmp_path / "other" / "metrics.json", metrics)
    sources = [str(runs.lora), str(tmp_path / "twin"), str(tmp_path / "other")]
    assert compare.main([*sources, "--out", str(tmp_path / "out")]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [r["run"] for r in rows if r["method"] == "lora"] == [LORA, "twin", "other"]
    assert [r["run"] for r in rows if r["method"] == "zero-shot"] == ["other", f"{LORA}, twin"]
    assert [r["run"] for r in rows if r["method"] == "one-shot"] == [f"{LORA}, twin, other"]
    assert [r["run"] for r in rows if r["method"] == "few-shot"] == [f"{LORA}, twin, other"]
    labels = compare.chart_labels(compare.build_rows(compare.read_runs(sources), None))
    assert len(set(labels)) == len(labels)
    assert {f"zero-shot\n{LORA}, twin", "zero-shot\nother", "lora\ntwin", "one-shot"} <= set(labels)


# ----------------------------------------------------------------------------------------------
# Refusals: one line on stderr, nothing written


def test_refuses_an_unfinished_run_with_one_line(runs, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs.lora, unfinished)
    (unfinished / rundir.MANIFEST).unlink()
    out = tmp_path / "out"
    proc = run_job("compare", str(runs.qlora), str(unfinished), "--out", str(out))
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error (config): {unfinished} has no manifest.json: that run did not finish; resume it with the same "
        "`python -m job train` command and output.run_name=unfinished"
    ]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_refusals(runs, tmp_path: Path) -> None:
    no_metrics = tmp_path / "no-metrics"
    no_metrics.mkdir()
    (no_metrics / rundir.MANIFEST).write_text("{}")
    with pytest.raises(ConfigInputError, match=r"no-metrics has no metrics\.json"):
        compare.read_run(str(no_metrics))
    with pytest.raises(ConfigInputError, match=rf"not a finished run folder \(it holds the runs {LORA}\)"):
        compare.read_run(str(runs.parent))
    with pytest.raises(ConfigInputError, match="is not a folder"):
        compare.read_run(str(tmp_path / "missing"))
    with pytest.raises(ConfigInputError, match=r"s3://bucket/prefix/<run> or hf://owner/repo"):
        compare.read_run("gs://bucket/runs/r1")
    with pytest.raises(ConfigInputError, match=r"name the run's own prefix"):
        compare.read_run("s3://bucket")
    with pytest.raises(ConfigInputError, match=r"hf://owner/repo or hf://owner/repo@revision"):
        compare.read_run("hf://just-a-name")

    broken = tmp_path / "broken"
    shutil.copytree(runs.lora, broken)
    (broken / "metrics.json").write_text('{"run": {"name": "broken"}, "finetuned": ')
    with pytest.raises(DataError, match=r"metrics\.json is not JSON"):
        compare.read_run(str(broken))
    (broken / "metrics.json").write_bytes(b'{"run": {"name": "\xff"}}')
    with pytest.raises(DataError, match=r"metrics\.json is not UTF-8 JSON"):
        compare.read_run(str(broken))
    (broken / "metrics.json").write_text(json.dumps({"run": {"name": "broken"}, "finetuned": {"rouge1": 0.4}}))
    with pytest.raises(DataError, match=r"lacks rouge1, rouge2, rougeL, rougeLsum in finetuned"):
        compare.read_run(str(broken))
    (broken / "metrics.json").write_text(json.dumps({"run": {"name": "broken"}, "finetuned": None, "baselines": {}}))
    with pytest.raises(DataError, match="holds no ROUGE result"):
        compare.read_run(str(broken))


@pytest.mark.parametrize(
    ("device", "gpu"),
    [
        ("NVIDIA A10G", "A10G"),
        ("Tesla T4", "T4"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", None),  # the catalog prices only the 40 GB A100
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("cpu", None),
    ],
)
def test_catalog_gpu_from_torch_device_names(device: str, gpu: str | None) -> None:
    from job import catalog

    assert compare.catalog_gpu(device, list(catalog.GPUS)) == gpu
    price = compare.catalog_price(device)
    assert (price is None) == (gpu is None)
    if price is not None:
        instances = [i for i in catalog.INSTANCES.values() if i.gpu == gpu]
        assert price.per_hour == min(catalog.prices()["on_demand"][i.name] for i in instances)


# ----------------------------------------------------------------------------------------------
# S3: moto's server on 127.0.0.1, the run uploaded by `python -m job publish`


@pytest.fixture(scope="module")
def s3_env():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield SimpleNamespace(env=env, client=client)
    server.stop()


def test_compare_reads_a_run_from_s3(runs, s3_env, tmp_path: Path) -> None:
    env = job_env(**s3_env.env)
    published = run_job("publish", str(runs.lora), "--to", f"s3://{BUCKET}/runs", env=env)
    assert published.returncode == 0, published.stderr[-3000:]
    uri = f"s3://{BUCKET}/runs/{LORA}"

    proc = run_job("compare", uri, str(runs.qlora), "--out", str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    assert [r["method"] for r in rows][:3] == ["lora", "few-shot", "one-shot"]
    assert rows[0]["ROUGE-L"] == cell(LORA_SCORES, "rougeL") and rows[0]["cost"] == "$1.41"
    zero = {r["run"]: r["model"] for r in rows if r["method"] == "zero-shot"}
    assert zero == {LORA: "`builtin:tiny-llama`", "shared": "`builtin:tiny-llama` (4-bit)"}  # config.yaml from S3
    assert f"{LORA} = {uri}" in proc.stdout
    with open(tmp_path / "comparison.csv", newline="") as f:
        assert next(csv.DictReader(f))["sources"] == uri

    # Refusals: no run at that prefix, an upload without its manifest, a bucket that does not exist.
    missing = run_job("compare", f"s3://{BUCKET}/runs/nothing", env=env)
    assert missing.returncode == 2
    assert f"error (config): s3://{BUCKET}/runs/nothing/metrics.json does not exist" in missing.stderr
    s3_env.client.copy_object(
        Bucket=BUCKET, Key="half/metrics.json", CopySource={"Bucket": BUCKET, "Key": f"runs/{LORA}/metrics.json"}
    )
    half = run_job("compare", f"s3://{BUCKET}/half", env=env)
    assert half.returncode == 2 and f"s3://{BUCKET}/half has no manifest.json: its upload did not finish" in half.stderr
    no_bucket = run_job("compare", "s3://no-such-bucket-here/runs/r1", env=env)
    assert no_bucket.returncode == 2 and "bucket no-such-bucket-here does not exist" in no_bucket.stderr
    nowhere = str(tmp_path / "no-aws-files")
    anonymous = job_env(
        AWS_ENDPOINT_URL=s3_env.env["AWS_ENDPOINT_URL"],
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=nowhere,
        AWS_SHARED_CREDENTIALS_FILE=nowhere,
        AWS_EC2_METADATA_DISABLED="true",
    )
    no_credentials = run_job("compare", uri, env=anonymous)
    assert no_credentials.returncode == 4
    assert f"error (auth): no AWS credentials to read {uri}" in no_credentials.stderr


# ----------------------------------------------------------------------------------------------
# The Hub: faked at huggingface_hub.hf_hub_download


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, runs, tmp_path: Path) -> SimpleNamespace:
    """`huggingface_hub.hf_hub_download` replaced (monkeypatched) by a fake serving the lora run's metrics.json and
    config.yaml from a folder, as the real one serves them from its cache, and raising EntryNotFoundError for a file
    the repo lacks, as the real one does; `fail` makes it raise that error instead."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    monkeypatch.setenv("HF_TOKEN", "hf_compareTestToken0123456789")
    monkeypatch.delenv("HF_TOKEN_FILE", raising=False)
    monkeypatch.delenv("HF_TOKEN_SECRET_ID", raising=False)
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    for name in ("metrics.json", "config.yaml"):
        shutil.copy(runs.lora / name, cache / name)
    state = SimpleNamespace(calls=[], fail=None, cache=cache)

    def fake_download(repo_id: str, filename: str, *, revision: str | None = None, **kwargs) -> str:
        state.calls.append((repo_id, filename, revision))
        if state.fail is not None:
            raise state.fail
        if not (cache / filename).is_file():
            raise EntryNotFoundError(f"404 {filename} not in {repo_id}")
        return str(cache / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return state


def test_compare_reads_a_run_from_the_hub(hub, runs, tmp_path: Path, capsys) -> None:
    assert compare.main(["hf://acme/dialogsum-lora@v1", str(runs.qlora), "--out", str(tmp_path)]) == 0
    assert hub.calls == [("acme/dialogsum-lora", name, "v1") for name in ("metrics.json", "config.yaml")]
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert rows[0]["method"] == "lora" and rows[0]["ROUGE-1"] == cell(LORA_SCORES, "rouge1")
    assert rows[0]["model"] == "`builtin:tiny-llama`"  # config.yaml from the repo: a 16-bit base
    assert f"{LORA} = hf://acme/dialogsum-lora@v1" in printed
    assert png_size(tmp_path / "comparison.png")[0] >= 700

    (hub.cache / "config.yaml").unlink()  # a repo without config.yaml still compares; its base precision is unknown
    run = compare.read_run("hf://acme/dialogsum-lora")
    assert hub.calls[-2:] == [("acme/dialogsum-lora", name, None) for name in ("metrics.json", "config.yaml")]
    assert run.name == LORA and run.quantized is None


def test_hub_refusals(hub) -> None:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    hub.fail = EntryNotFoundError("404 metrics.json")
    with pytest.raises(ConfigInputError, match=r"hf://acme/model at revision main has no metrics\.json"):
        compare.read_run("hf://acme/model@main")
    response = SimpleNamespace(status_code=404, headers={}, request=None)
    hub.fail = RepositoryNotFoundError("404 Repository Not Found", response=response)
    with pytest.raises(ConfigInputError, match="does not exist or is private to another account"):
        compare.read_run("hf://acme/missing")


def test_compare_never_writes_into_a_complete_run_and_keeps_existing_files(runs, tmp_path: Path) -> None:
    from job.errors import OutputError

    before = {p: p.read_bytes() for p in runs.qlora.rglob("*") if p.is_file()}
    for out in (runs.qlora, runs.qlora / "adapter"):
        with pytest.raises(OutputError, match=r"--out .* lies in the complete run folder .* never written again"):
            compare.main([str(runs.qlora), "--out", str(out), "--overwrite"])
    assert {p: p.read_bytes() for p in runs.qlora.rglob("*") if p.is_file()} == before

    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.md").write_text("mine\n")
    with pytest.raises(OutputError, match=r"comparison\.md exists; pass --overwrite to replace it"):
        compare.main([str(runs.qlora), "--out", str(out)])
    assert (out / "comparison.md").read_text() == "mine\n" and not (out / "comparison.csv").exists()
    assert compare.main([str(runs.qlora), "--out", str(out), "--overwrite"]) == 0
    assert (out / "comparison.md").read_text().startswith("# ROUGE comparison")
