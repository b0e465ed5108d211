"""The OpenAI Batch output format, and result files that survive a pod killed at any instant.

A record is `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code",
"message"[, "line"]} | null}`. Per shard, a 2xx answer goes to `shard-IIIII-of-CCCCC.output.jsonl`; any other
outcome (a non-2xx answer after retries, a connection failure, a malformed input line) goes to
`shard-IIIII-of-CCCCC.errors.jsonl`.

Durability: each record is one `write` of a whole line to a file opened `O_APPEND`, followed by `fsync`, so a
record is either complete on disk or a partial last line. `recover` drops such a partial line (truncating the
file) and returns the complete records, which a restarted shard then skips.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RETRYABLE_ERROR_CODES = frozenset({"connection_error", "timeout"})
OUTPUT_GLOB = "shard-*-of-*.output.jsonl"
ERRORS_GLOB = "shard-*-of-*.errors.jsonl"


class CorruptResultsError(RuntimeError):
    """A results file has an unreadable line before its last one: not a crash artefact, so nothing is guessed."""


class ShardBusyError(RuntimeError):
    """Another process holds the shard's lock (two pods for one index must not both append)."""


@dataclass(frozen=True)
class ShardFiles:
    output: Path
    errors: Path
    summary: Path
    lock: Path

    @classmethod
    def of(cls, output_dir: Path, shard_index: int, shard_count: int) -> ShardFiles:
        stem = output_dir / f"shard-{shard_index:05d}-of-{shard_count:05d}"
        return cls(*(Path(f"{stem}.{suffix}") for suffix in ("output.jsonl", "errors.jsonl", "summary.json", "lock")))


def new_record_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def response_record(record_id: str, custom_id: str, status_code: int, request_id: str, body: Any) -> dict[str, Any]:
    response = {"status_code": status_code, "request_id": request_id, "body": body}
    return {"id": record_id, "custom_id": custom_id, "response": response, "error": None}


def error_record(record_id: str, custom_id: str | None, code: str, message: str, line: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if line is not None:
        error["line"] = line
    return {"id": record_id, "custom_id": custom_id, "response": None, "error": error}


def retryable_status(status_code: int) -> bool:
    return status_code in (408, 429) or status_code >= 500


def is_success(record: dict[str, Any]) -> bool:
    response = record.get("response")
    return record.get("error") is None and response is not None and 200 <= response["status_code"] < 300


def is_retryable(record: dict[str, Any]) -> bool:
    """Whether a failure may go away on its own (overload, outage): a restarted shard sends it again."""
    error, response = record.get("error"), record.get("response")
    if error is not None:
        return error.get("code") in RETRYABLE_ERROR_CODES
    return response is not None and retryable_status(response["status_code"])


def record_key(record: dict[str, Any]) -> tuple[str, str | int]:
    """The input line a record answers: its custom_id, or the line number of a line that had none."""
    if record.get("custom_id") is not None:
        return ("id", record["custom_id"])
    return ("line", (record.get("error") or {}).get("line", -1))


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "custom_id" in record else None


def _scan(path: Path, data: bytes) -> tuple[list[dict[str, Any]], int]:
    """Complete records and the byte offset where they end; raises if a line other than the last is unreadable."""
    lines = data.split(b"\n")[:-1]  # what follows the last newline is an unterminated partial line
    records, good_end, offset = [], 0, 0
    for number, raw in enumerate(lines, start=1):
        offset += len(raw) + 1
        record = _parse(raw)
        if record is None:
            if number < len(lines):
                raise CorruptResultsError(f"{path}: line {number} is not a result record; move the file away to redo it")
            break  # a complete-looking but unreadable last line is a torn write too
        records.append(record)
        good_end = offset
    return records, good_end


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a results file, read only (a partial last line, if any, is ignored)."""
    return _scan(path, path.read_bytes())[0]


def recover(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The complete records of a results file and the number of bytes of a partial last line truncated away."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    records, good_end = _scan(path, data)
    dropped = len(data) - good_end
    if dropped:
        with open(path, "r+b") as file:
            file.truncate(good_end)
            os.fsync(file.fileno())
    return records, dropped


def rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    """Atomically replace a results file (write a temporary file, fsync, rename, fsync the folder)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        file.write(b"".join(encode_record(record) for record in records))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def encode_record(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultLog:
    """An append-only JSONL file in which a record is durable once `append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fsync_dir(path.parent)  # the file's creation itself survives a crash

    def append(self, record: dict[str, Any]) -> None:
        data = memoryview(encode_record(record))
        while data:  # one write for a line in practice; the loop only covers short writes
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class ShardLock:
    """An exclusive, non-blocking lock on a shard's lock file, released when the process exits in any way."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ShardBusyError(f"{path}: another process is working on this shard") from None

    def release(self) -> None:
        os.close(self._fd)
