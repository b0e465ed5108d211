"""Result files: durable appends, recovery of a torn last line, failure classification, the shard lock."""

from __future__ import annotations

import json

import pytest

from serving.batch.results import (
    CorruptResultsError,
    ResultLog,
    ShardBusyError,
    ShardFiles,
    ShardLock,
    error_record,
    is_retryable,
    is_success,
    read_records,
    record_key,
    recover,
    response_record,
    rewrite,
)


def _records(n):
    return [response_record(f"batch_req_{i}", f"id-{i}", 200, f"r{i}", {"choices": []}) for i in range(n)]


def test_appended_records_are_recovered(tmp_path):
    log = ResultLog(tmp_path / "out.jsonl")
    for record in _records(3):
        log.append(record)
    log.close()
    assert recover(tmp_path / "out.jsonl") == (_records(3), 0)


def test_partial_last_line_is_truncated_and_reported(tmp_path):
    path = tmp_path / "out.jsonl"
    complete = b"".join(json.dumps(r).encode() + b"\n" for r in _records(2))
    path.write_bytes(complete + b'{"id": "batch_req_2", "custom_id": "id-')
    assert read_records(path) == _records(2)  # read only: the file is untouched
    assert path.read_bytes().endswith(b"id-")
    records, dropped = recover(path)
    assert records == _records(2) and dropped == len(b'{"id": "batch_req_2", "custom_id": "id-')
    assert path.read_bytes() == complete
    log = ResultLog(path)
    log.append(_records(3)[2])
    log.close()
    assert recover(path) == (_records(3), 0)


def test_unreadable_but_terminated_last_line_is_a_torn_write_too(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(json.dumps(_records(1)[0]).encode() + b"\n" + b"\x00\x00\x00\n")
    assert recover(path) == (_records(1), 4)


def test_unreadable_line_before_the_last_is_not_guessed_at(tmp_path):
    path = tmp_path / "out.jsonl"
    lines = [json.dumps(r) for r in _records(3)]
    lines[1] = "not a record"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptResultsError, match="out.jsonl: line 2 is not a result record"):
        recover(path)


def test_missing_file_recovers_to_nothing(tmp_path):
    assert recover(tmp_path / "absent.jsonl") == ([], 0)


def test_rewrite_replaces_the_file(tmp_path):
    path = tmp_path / "errors.jsonl"
    path.write_text("old\n")
    rewrite(path, _records(2))
    assert recover(path) == (_records(2), 0)
    assert [p.name for p in tmp_path.iterdir()] == ["errors.jsonl"]


@pytest.mark.parametrize(
    ("record", "success", "retryable"),
    [
        (response_record("i", "c", 200, "r", {}), True, False),
        (response_record("i", "c", 400, "r", {}), False, False),
        (response_record("i", "c", 404, "r", {}), False, False),
        (response_record("i", "c", 408, "r", {}), False, True),
        (response_record("i", "c", 429, "r", {}), False, True),
        (response_record("i", "c", 500, "r", {}), False, True),
        (response_record("i", "c", 503, "r", {}), False, True),
        (error_record("i", "c", "connection_error", "refused"), False, True),
        (error_record("i", "c", "timeout", "slow"), False, True),
        (error_record("i", None, "invalid_request_line", "line 3: bad", line=3), False, False),
    ],
)
def test_outcome_classification(record, success, retryable):
    assert is_success(record) is success
    assert is_retryable(record) is retryable


def test_record_keys():
    assert record_key(response_record("i", "c", 200, "r", {})) == ("id", "c")
    assert record_key(error_record("i", None, "invalid_request_line", "m", line=3)) == ("line", 3)


def test_record_format_is_openai_batch_output():
    assert response_record("batch_req_1", "c", 200, "req-9", {"x": 1}) == {
        "id": "batch_req_1", "custom_id": "c", "response": {"status_code": 200, "request_id": "req-9", "body": {"x": 1}},
        "error": None,
    }
    assert error_record("batch_req_2", "c", "timeout", "slow") == {
        "id": "batch_req_2", "custom_id": "c", "response": None, "error": {"code": "timeout", "message": "slow"},
    }


def test_shard_file_names(tmp_path):
    files = ShardFiles.of(tmp_path, 3, 12)
    assert files.output.name == "shard-00003-of-00012.output.jsonl"
    assert files.errors.name == "shard-00003-of-00012.errors.jsonl"
    assert "error" in files.errors.name


def test_a_shard_cannot_be_worked_on_twice_at_once(tmp_path):
    lock = ShardLock(tmp_path / "s.lock")
    with pytest.raises(ShardBusyError, match="another process"):
        ShardLock(tmp_path / "s.lock")
    lock.release()
    ShardLock(tmp_path / "s.lock").release()
