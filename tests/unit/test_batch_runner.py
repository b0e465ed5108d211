"""One shard against an in-process fake OpenAI API: format, retries, bounded concurrency, resume, idempotence."""

from __future__ import annotations

import json

import httpx
import pytest

from serving.batch.client import RetryPolicy, api_base
from serving.batch.inputs import DuplicateIdsError
from serving.batch.results import ShardFiles, read_records
from serving.batch.runner import BatchJobConfig, run_shard
from tests.unit.batch_fakes import FakeAPI, chat_line, write_input

FAST = RetryPolicy(max_retries=3, base_s=0.0, cap_s=0.01)


def _config(tmp_path, path, **kw):
    return BatchJobConfig(input=path, output_dir=tmp_path / "results", endpoint="http://fake:8000",
                          retry=FAST, progress=False, **kw)


def _files(tmp_path, index=0, count=1):
    return ShardFiles.of(tmp_path / "results", index, count)


def _ids(path):
    return [r["custom_id"] for r in read_records(path)] if path.exists() else []


def test_every_line_is_answered_in_openai_batch_format(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
    api = FakeAPI()
    summary = run_shard(_config(tmp_path, path), api.transport)
    files = _files(tmp_path)
    records = read_records(files.output)
    assert sorted(r["custom_id"] for r in records) == [f"r{i}" for i in range(5)]
    for record in records:
        assert record["id"].startswith("batch_req_") and record["error"] is None
        assert record["response"]["status_code"] == 200
        assert record["response"]["request_id"] == record["id"]  # sent as X-Request-Id, echoed back
        assert record["response"]["body"]["choices"][0]["message"]["content"] == f"echo: say {record['custom_id']}"
    assert not read_records(files.errors)
    assert (summary.assigned, summary.sent, summary.succeeded, summary.exit_code) == (5, 5, 5, 0)
    assert summary.completion_tokens == 10
    assert json.loads(files.summary.read_text())["succeeded"] == 5
    assert {str(r.url) for r in api.requests} == {"http://fake:8000/v1/chat/completions"}


def test_429_and_5xx_are_retried_then_answered(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a", "p-a"), chat_line("b", "p-b")])
    api = FakeAPI({"p-a": [503, 502, 200], "p-b": [429, 200]})
    summary = run_shard(_config(tmp_path, path), api.transport)
    assert api.calls == {"p-a": 3, "p-b": 2}
    assert sorted(_ids(_files(tmp_path).output)) == ["a", "b"] and summary.exit_code == 0


def test_final_4xx_goes_to_the_error_file_and_is_not_resent(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a", "p-a"), chat_line("bad", "p-bad")])
    api = FakeAPI({"p-bad": [400]})
    summary = run_shard(_config(tmp_path, path), api.transport)
    (error,) = read_records(_files(tmp_path).errors)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400 and error["error"] is None
    assert api.calls["p-bad"] == 1 and summary.failed == 1 and summary.exit_code == 0
    again = FakeAPI()
    summary = run_shard(_config(tmp_path, path), again.transport)
    assert not again.requests and summary.skipped == 2
    assert _ids(_files(tmp_path).errors) == ["bad"]


def test_retryable_failures_are_recorded_then_resent_by_a_rerun(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a", "p-a"), chat_line("b", "p-b"), chat_line("c", "p-c")])
    down = FakeAPI({"p-b": [httpx.ConnectError], "p-c": [503]})
    summary = run_shard(_config(tmp_path, path), down.transport)
    files = _files(tmp_path)
    errors = {r["custom_id"]: r for r in read_records(files.errors)}
    assert errors["b"]["error"]["code"] == "connection_error" and "after 4 attempts" in errors["b"]["error"]["message"]
    assert errors["c"]["response"]["status_code"] == 503
    assert down.calls["p-b"] == down.calls["p-c"] == 4
    assert summary.retryable_left == 2 and summary.exit_code == 3
    up = FakeAPI()
    summary = run_shard(_config(tmp_path, path), up.transport)
    assert sorted(up.calls) == ["p-b", "p-c"] and summary.exit_code == 0
    assert sorted(_ids(files.output)) == ["a", "b", "c"] and _ids(files.errors) == []


def test_timeouts_are_retryable(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a", "p-a")])
    api = FakeAPI({"p-a": [httpx.ReadTimeout, 200]})
    run_shard(_config(tmp_path, path), api.transport)
    assert api.calls["p-a"] == 2 and _ids(_files(tmp_path).output) == ["a"]


def test_a_restarted_shard_skips_written_ids_and_redoes_a_torn_last_line(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"p{i}") for i in range(6)])
    run_shard(_config(tmp_path, path), FakeAPI().transport)
    output = _files(tmp_path).output
    lines = output.read_bytes().splitlines(keepends=True)
    done = [json.loads(line)["custom_id"] for line in lines[:2]]
    output.write_bytes(b"".join(lines[:2]) + lines[2][:25])  # killed after two lines, in the middle of the third
    api = FakeAPI()
    summary = run_shard(_config(tmp_path, path), api.transport)
    assert summary.skipped == 2 and summary.recovered_partial_bytes == 25 and summary.sent == 4
    assert not {f"p{cid[1:]}" for cid in done} & set(api.calls)
    ids = _ids(output)
    assert sorted(ids) == [f"r{i}" for i in range(6)] and len(ids) == len(set(ids))


def test_malformed_lines_get_named_error_records_and_are_not_sent(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a"), "{oops", {**chat_line("b"), "method": "GET"}, "[]"])
    api = FakeAPI()
    summary = run_shard(_config(tmp_path, path), api.transport)
    errors = read_records(_files(tmp_path).errors)
    assert [(e["custom_id"], e["error"]["line"], e["error"]["code"]) for e in errors] == [
        (None, 2, "invalid_request_line"), ("b", 3, "invalid_request_line"), (None, 4, "invalid_request_line")]
    assert errors[0]["error"]["message"].startswith("line 2: not valid JSON")
    assert "line 3: 'method' must be \"POST\"" in errors[1]["error"]["message"]
    assert len(api.requests) == 1 and summary.malformed == 3 and summary.exit_code == 0
    run_shard(_config(tmp_path, path), FakeAPI().transport)
    assert len(read_records(_files(tmp_path).errors)) == 3  # not written twice


def test_duplicate_ids_stop_the_shard_before_any_request(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a"), chat_line("b"), chat_line("a")])
    api = FakeAPI()
    with pytest.raises(DuplicateIdsError, match=r"'a' \(lines 1, 3\)"):
        run_shard(_config(tmp_path, path), api.transport)
    assert not api.requests and not (tmp_path / "results").exists()


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_is_bounded(tmp_path, concurrency):
    path = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(12)])
    api = FakeAPI(delay_s=0.02)
    run_shard(_config(tmp_path, path, concurrency=concurrency), api.transport)
    assert api.peak == concurrency and len(api.requests) == 12


def test_shards_together_answer_each_line_once(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(40)])
    ids = []
    for index in range(3):
        run_shard(_config(tmp_path, path, shard_index=index, shard_count=3), FakeAPI().transport)
        ids += _ids(_files(tmp_path, index, 3).output)
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))


def test_api_key_and_endpoint_forms(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a")])
    api = FakeAPI()
    config = BatchJobConfig(input=path, output_dir=tmp_path / "out", endpoint="http://fake:9/v1/", api_key="k",
                            retry=FAST, progress=False)
    run_shard(config, api.transport)
    (request,) = api.requests
    assert str(request.url) == "http://fake:9/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer k"
    assert api_base("http://gw/openai/v1") == "http://gw/openai" and api_base("http://h:8000/") == "http://h:8000"


def test_backoff_is_capped_and_honours_retry_after():
    policy = RetryPolicy(base_s=1.0, cap_s=4.0)
    assert all(0 <= policy.delay(k) <= min(4.0, 2**k) for k in range(10) for _ in range(20))
    assert policy.delay(0, retry_after_s=3.0) == 3.0 and policy.delay(0, retry_after_s=100.0) == 4.0
