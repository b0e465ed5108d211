"""The OpenAI Batch input file and the stable assignment of its lines to shards.

Each non-blank line is one request: `{"custom_id": str, "method": "POST", "url": "/v1/...", "body": {...}}`.
A line that is not such an object is a `MalformedLine` that names its (1-based) line number; it is answered
with an error record, never dropped. A `custom_id` used twice makes the whole file invalid (`DuplicateIdsError`),
since results are joined back to requests by that id.

Shard assignment: a line belongs to shard `sha256(key) mod shard_count`, read as the first 8 bytes big-endian,
where `key` is the line's `custom_id` (or `line:<N>` for a line without one). It depends only on the id and the
shard count, never on line order, Python's hash seed or the machine, so every pod of an Indexed Job computes
the same partition and a restarted pod gets the same lines back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIELDS = frozenset({"custom_id", "method", "url", "body"})
URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_NAMED = 20  # ids or lines listed by name in one message


@dataclass(frozen=True)
class BatchRequest:
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def key(self) -> tuple[str, str | int]:
        return ("id", self.custom_id)


@dataclass(frozen=True)
class MalformedLine:
    line: int
    reason: str
    custom_id: str | None = None

    @property
    def key(self) -> tuple[str, str | int]:
        return ("id", self.custom_id) if self.custom_id is not None else ("line", self.line)

    @property
    def message(self) -> str:
        return f"line {self.line}: {self.reason}"


Item = BatchRequest | MalformedLine


class DuplicateIdsError(ValueError):
    """The input uses a custom_id more than once; the message names them with their line numbers."""

    def __init__(self, path: Path, duplicates: dict[str, list[int]]) -> None:
        self.duplicates = duplicates
        named = [f"{cid!r} (lines {', '.join(map(str, lines))})" for cid, lines in list(duplicates.items())[:MAX_NAMED]]
        more = f" and {len(duplicates) - MAX_NAMED} more" if len(duplicates) > MAX_NAMED else ""
        super().__init__(f"{path}: duplicate custom_id: {'; '.join(named)}{more}")


def shard_of(key: tuple[str, str | int], shard_count: int) -> int:
    text = key[1] if key[0] == "id" else f"line:{key[1]}"
    digest = hashlib.sha256(str(text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shard_count


def parse_line(line: int, raw: bytes) -> Item:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return MalformedLine(line, "not UTF-8 text")
    except json.JSONDecodeError as exc:
        return MalformedLine(line, f"not valid JSON ({exc.msg}, column {exc.colno})")
    if not isinstance(obj, dict):
        return MalformedLine(line, f"expected a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return MalformedLine(line, "'custom_id' must be a non-empty string")
    problem = _problem(obj)
    if problem:
        return MalformedLine(line, problem, custom_id)
    return BatchRequest(line, custom_id, obj["url"], obj["body"])


def _problem(obj: dict[str, Any]) -> str | None:
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; a line has custom_id, method, url, body"
    if obj.get("method") != "POST":
        return f"'method' must be \"POST\", got {obj.get('method')!r}"
    if obj.get("url") not in URLS:
        return f"'url' must be one of {', '.join(URLS)}, got {obj.get('url')!r}"
    body = obj.get("body")
    if not isinstance(body, dict):
        return "'body' must be a JSON object"
    if body.get("stream"):
        return "'body.stream' is not supported in a batch"
    return None


def read_items(path: Path) -> Iterator[Item]:
    """Every non-blank line of the file, parsed, in file order (blank lines are skipped, not errors)."""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield parse_line(number, raw)


def read_shard(path: Path, shard_index: int, shard_count: int) -> list[Item]:
    """This shard's lines in file order. The whole file is scanned, so every shard rejects a duplicate anywhere."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard index {shard_index} is outside 0..{shard_count - 1}")
    return _scan(path, lambda item: shard_of(item.key, shard_count) == shard_index)


def read_keys(path: Path) -> list[Item]:
    """Every line in file order with the request bodies dropped (what a merge needs to order results)."""
    return [
        MalformedLine(item.line, item.reason, item.custom_id) if isinstance(item, MalformedLine)
        else BatchRequest(item.line, item.custom_id, item.url, {})
        for item in _scan(path, lambda item: True)
    ]


def _scan(path: Path, keep) -> list[Item]:
    kept: list[Item] = []
    lines_of: dict[str, list[int]] = {}
    for item in read_items(path):
        if item.custom_id is not None:
            lines_of.setdefault(item.custom_id, []).append(item.line)
        if keep(item):
            kept.append(item)
    duplicates = {cid: lines for cid, lines in lines_of.items() if len(lines) > 1}
    if duplicates:
        raise DuplicateIdsError(path, duplicates)
    return kept
