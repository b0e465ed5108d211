"""The Batch input format: per-line validation with named line numbers, duplicate ids, stable shard assignment."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from serving.batch.inputs import (
    BatchRequest,
    DuplicateIdsError,
    MalformedLine,
    parse_line,
    read_items,
    read_shard,
    shard_of,
)
from tests.unit.batch_fakes import chat_line, write_input

OK = chat_line("a")


@pytest.mark.parametrize(
    ("raw", "reason", "custom_id"),
    [
        ("{not json", "not valid JSON", None),
        ('["a", "b"]', "expected a JSON object, got list", None),
        (json.dumps({**OK, "custom_id": ""}), "'custom_id' must be a non-empty string", None),
        (json.dumps({k: v for k, v in OK.items() if k != "custom_id"}), "'custom_id' must be a non-empty string", None),
        (json.dumps({**OK, "custom_id": 7}), "'custom_id' must be a non-empty string", None),
        (json.dumps({**OK, "method": "GET"}), "'method' must be \"POST\", got 'GET'", "a"),
        (json.dumps({**OK, "url": "/v1/images"}), "'url' must be one of", "a"),
        (json.dumps({**OK, "body": "hi"}), "'body' must be a JSON object", "a"),
        (json.dumps({**OK, "body": {**OK["body"], "stream": True}}), "'body.stream' is not supported", "a"),
        (json.dumps({**OK, "extra": 1}), "unknown field(s) extra", "a"),
    ],
)
def test_malformed_lines_name_their_line_and_reason(raw, reason, custom_id):
    item = parse_line(12, raw.encode())
    assert isinstance(item, MalformedLine)
    assert reason in item.reason and item.message.startswith("line 12: ")
    assert item.custom_id == custom_id
    assert item.key == (("id", custom_id) if custom_id else ("line", 12))


def test_not_utf8_is_malformed():
    assert parse_line(3, b'{"custom_id": "\xff"}') == MalformedLine(3, "not UTF-8 text")


@pytest.mark.parametrize("url", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"])
def test_valid_lines_parse(url):
    item = parse_line(1, json.dumps({**OK, "url": url}).encode())
    assert item == BatchRequest(1, "a", url, OK["body"])


def test_line_numbers_are_physical_and_blank_lines_skipped(tmp_path):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a"), "", "   ", "oops", chat_line("b")])
    items = list(read_items(path))
    assert [(type(i).__name__, i.line) for i in items] == [("BatchRequest", 1), ("MalformedLine", 4), ("BatchRequest", 5)]


def test_shard_is_sha256_of_custom_id_mod_count():
    for custom_id in ["a", "req-1", "ü", "x" * 300]:
        digest = hashlib.sha256(custom_id.encode()).digest()
        for count in (1, 2, 3, 7, 64):
            assert shard_of(("id", custom_id), count) == int.from_bytes(digest[:8], "big") % count
    # pinned: a change of the scheme would silently reshuffle the shards of jobs already half done
    assert [shard_of(("id", "req-1"), n) for n in (2, 3, 7)] == [1, 1, 6]
    assert [shard_of(("id", "a"), n) for n in (2, 3, 7)] == [0, 1, 4]
    assert shard_of(("line", 5), 4) == 1


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_are_complete_disjoint_ordered_and_balanced(tmp_path, count):
    lines = [chat_line(f"req-{i}") for i in range(600)] + ["garbage"] * 3
    path = write_input(tmp_path / "in.jsonl", lines)
    shards = [read_shard(path, index, count) for index in range(count)]
    keys = [item.key for shard in shards for item in shard]
    assert len(keys) == len(set(keys)) == 603
    for shard in shards:
        assert [item.line for item in shard] == sorted(item.line for item in shard)
        assert len(shard) > 0.7 * 600 / count
    assert sum(isinstance(item, MalformedLine) for shard in shards for item in shard) == 3


def test_assignment_does_not_depend_on_line_order(tmp_path):
    lines = [chat_line(f"req-{i}") for i in range(200)]
    first = {i.custom_id for i in read_shard(write_input(tmp_path / "a.jsonl", lines), 1, 3)}
    random.Random(0).shuffle(lines)
    second = {i.custom_id for i in read_shard(write_input(tmp_path / "b.jsonl", lines), 1, 3)}
    assert first == second


@pytest.mark.parametrize("index", [0, 1])
def test_duplicate_ids_are_an_error_naming_them_in_every_shard(tmp_path, index):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a"), chat_line("b"), chat_line("a"), chat_line("c"),
                                               chat_line("b"), {**chat_line("b"), "method": "GET"}])
    with pytest.raises(DuplicateIdsError) as info:
        read_shard(path, index, 2)
    assert "'a' (lines 1, 3)" in str(info.value) and "'b' (lines 2, 5, 6)" in str(info.value)
    assert "'c'" not in str(info.value)


def test_shard_index_outside_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outside 0..1"):
        read_shard(write_input(tmp_path / "in.jsonl", [OK]), 2, 2)
