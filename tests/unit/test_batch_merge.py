"""`pdserve batch merge`: one record per input line, in input order; missing ids reported."""

from __future__ import annotations

from serving.batch.merge import merge_results
from serving.batch.results import ResultLog, ShardFiles, error_record, read_records, response_record
from tests.unit.batch_fakes import chat_line, write_input


def _write(path, records):
    log = ResultLog(path)
    for record in records:
        log.append(record)
    log.close()


def _ok(custom_id):
    return response_record(f"batch_req_{custom_id}", custom_id, 200, "r", {"choices": [{"text": custom_id}]})


def test_merge_orders_as_the_input_and_reports_missing_ids(tmp_path):
    ids = [f"r{i}" for i in range(8)]
    path = write_input(tmp_path / "in.jsonl", [chat_line(i) for i in ids[:4]] + ["{broken"] + [chat_line(i) for i in ids[4:]])
    results = tmp_path / "results"
    results.mkdir()
    # shard files hold their lines in completion order, not input order
    _write(ShardFiles.of(results, 1, 2).output, [_ok("r7"), _ok("r1"), _ok("r5")])
    _write(ShardFiles.of(results, 0, 2).output, [_ok("r6"), _ok("r0"), _ok("r2")])
    _write(ShardFiles.of(results, 0, 2).errors, [
        error_record("batch_req_x", None, "invalid_request_line", "line 5: not valid JSON", line=5),
        response_record("batch_req_y", "r3", 400, "r", {"error": {"message": "bad"}}),
    ])
    summary = merge_results(path, results, tmp_path / "merged.jsonl")
    merged = read_records(tmp_path / "merged.jsonl")
    assert [r["custom_id"] for r in merged] == ["r0", "r1", "r2", "r3", None, "r5", "r6", "r7"]
    assert merged[4]["error"]["line"] == 5
    assert summary.missing == ["r4"] and summary.exit_code == 1
    assert (summary.lines, summary.succeeded, summary.failed) == (9, 6, 2)
    assert "missing 1" in summary.text() and "missing: r4" in summary.text()


def test_a_success_beats_an_error_and_double_answers_are_reported(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a"), chat_line("b")])
    results = tmp_path / "results"
    results.mkdir()
    # an earlier run with another shard count left its files in the same folder
    _write(ShardFiles.of(results, 0, 1).errors, [error_record("batch_req_e", "a", "connection_error", "down")])
    _write(ShardFiles.of(results, 0, 1).output, [_ok("b")])
    _write(ShardFiles.of(results, 1, 2).output, [_ok("a"), _ok("b")])
    summary = merge_results(path, results, results / "merged.jsonl")
    merged = read_records(results / "merged.jsonl")
    assert [(r["custom_id"], r["response"]["status_code"]) for r in merged] == [("a", 200), ("b", 200)]
    assert summary.answered_twice == ["b"] and summary.missing == [] and summary.exit_code == 0


def test_results_for_ids_not_in_the_input_are_reported(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a")])
    results = tmp_path / "results"
    results.mkdir()
    _write(ShardFiles.of(results, 0, 1).output, [_ok("a"), _ok("zz")])
    summary = merge_results(path, results, tmp_path / "m.jsonl")
    assert summary.not_in_input == ["zz"] and len(read_records(tmp_path / "m.jsonl")) == 1
