"""`job.uri`: the one parser of the places a run goes to or comes from, with the config's own messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from job import config, uri


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://bucket/a/b/", uri.Location("s3://bucket/a/b", "s3", bucket="bucket", prefix="a/b")),
        ("s3://bucket", uri.Location("s3://bucket", "s3", bucket="bucket")),
        ("hf://owner/repo/", uri.Location("hf://owner/repo", "hf", repo_id="owner/repo")),
        ("./runs", uri.Location("./runs", "local", path="./runs")),
        ("file:///data/runs", uri.Location("file:///data/runs", "local", path="/data/runs")),
    ],
)
def test_parse(text: str, expected: uri.Location) -> None:
    assert uri.parse(text) == expected
    assert uri.parse(text).remote == (expected.scheme != "local") == uri.is_remote(text)


def test_keys_and_children() -> None:
    where = uri.parse("s3://bucket/runs/")
    assert where.key("r1") == "runs/r1" and where.key(None) == "runs" and where.child("r1") == "s3://bucket/runs/r1"
    assert uri.parse("s3://bucket").key("r1", "metrics.json") == "r1/metrics.json"
    assert uri.parse("~/runs").local_path() == Path.home() / "runs"


def test_a_revision_only_where_one_is_read() -> None:
    assert uri.parse("hf://o/r@v2", "RUN", revision=True).revision == "v2"
    with pytest.raises(uri.LocationError, match=r"output.uri 'hf://o/r@v2' must be hf://owner/repo$"):
        uri.parse("hf://o/r@v2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("s3:bucket/runs", "output.uri 's3:bucket/runs' is missing a slash; use s3://bucket/prefix or hf://owner/repo"),
        ("gs://b/runs", "output.uri 'gs://b/runs': unknown scheme gs://; use a local folder, s3://bucket/prefix or hf://owner/repo"),
        ("s3:///runs", "output.uri 's3:///runs' names no bucket; use s3://bucket/prefix"),
        ("hf://owner", "output.uri 'hf://owner' must be hf://owner/repo"),
        ("hf://a/b/c", "output.uri 'hf://a/b/c' must be hf://owner/repo"),
    ],
)  # fmt: skip
def test_bad_uris_fail_with_the_configs_message(text: str, message: str) -> None:
    with pytest.raises(uri.LocationError) as e:
        uri.parse(text)
    assert str(e.value) == message
    with pytest.raises(config.ConfigError) as e:
        config.resolve("test", [f"output.uri={text}"])
    assert message in str(e.value)


def test_the_config_hands_out_the_parsed_destination() -> None:
    cfg = config.resolve("test", ["output.uri=s3://team/exp/runs"])
    assert cfg.output.location == uri.Location("s3://team/exp/runs", "s3", bucket="team", prefix="exp/runs")
