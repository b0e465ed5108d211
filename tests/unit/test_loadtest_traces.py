"""Trace parsing (Azure CSV, Mooncake JSONL) and scaling into a replay schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.traces import (
    Trace,
    TraceRequest,
    TraceScaling,
    load_azure_csv,
    load_mooncake_jsonl,
    load_trace,
    parse_azure_timestamp,
    schedule,
    select_window,
    time_scale_for_rate,
    traces_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_TRACES = traces_dir(REPO_ROOT)
needs_shared = pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason=f"shared traces not found at {SHARED_TRACES}")


@pytest.fixture
def azure_csv(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:50.9951690,396,109\n"  # out of order on purpose
                    "2023-11-16 18:15:46.6805900,374,44\n"
                    "2023-11-16 18:15:51,879,55\n")
    return path


@pytest.fixture
def mooncake_jsonl(tmp_path):
    rows = [{"timestamp": 0, "input_length": 1500, "output_length": 20, "hash_ids": [0, 1, 2]},
            {"timestamp": 2500, "input_length": 1100, "output_length": 7, "hash_ids": [0, 1, 3]},
            {"timestamp": 1000, "input_length": 300, "output_length": 1, "hash_ids": [9]}]
    path = tmp_path / "mooncake.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_azure_timestamp_keeps_seven_fractional_digits():
    a = parse_azure_timestamp("2023-11-16 18:15:46.6805900")
    b = parse_azure_timestamp("2023-11-16 18:15:50.9951690")
    assert b - a == pytest.approx(4.314579, abs=1e-6)
    assert parse_azure_timestamp("2023-11-16 18:15:47") - a == pytest.approx(0.31941, abs=1e-6)


def test_azure_csv_sorted_and_relative(azure_csv):
    trace = load_azure_csv(azure_csv)
    assert [r.input_tokens for r in trace.requests] == [374, 396, 879]
    assert [r.output_tokens for r in trace.requests] == [44, 109, 55]
    assert [round(r.arrival_s, 6) for r in trace.requests] == [0.0, 4.314579, 4.31941]
    assert trace.block_tokens is None and trace.requests[0].hash_ids == ()


def test_mooncake_jsonl_ms_timestamps_and_hash_ids(mooncake_jsonl):
    trace = load_mooncake_jsonl(mooncake_jsonl)
    assert [r.arrival_s for r in trace.requests] == [0.0, 1.0, 2.5]
    assert trace.requests[2].hash_ids == (0, 1, 3) and trace.block_tokens == 512


def test_load_trace_by_suffix_and_missing_file(azure_csv, mooncake_jsonl, tmp_path):
    assert load_trace(str(azure_csv), tmp_path).block_tokens is None
    assert load_trace(str(mooncake_jsonl), tmp_path).block_tokens == 512
    with pytest.raises(FileNotFoundError, match="shared/traces"):
        load_trace("azure", tmp_path / "nowhere")


def test_window_is_relative_to_its_start():
    trace = Trace("t", [TraceRequest(float(t), 10, 10) for t in range(10)])
    window = select_window(trace, start_s=3, window_s=4)
    assert [r.arrival_s for r in window] == [0, 1, 2, 3]
    assert len(select_window(trace, start_s=3, max_requests=2)) == 2


def test_time_scale_for_rate():
    requests = [TraceRequest(float(t), 1, 1) for t in range(11)]  # 11 requests over 10 s
    # at x1 the mean rate is 1.1 req/s; 0.5 req/s needs 22 s: scale 2.2
    assert time_scale_for_rate(requests, 0.5) == pytest.approx(2.2)
    assert time_scale_for_rate(requests, 1.1, window_s=20) == pytest.approx(0.5)


def test_schedule_scales_time_and_lengths_and_clamps(mooncake_jsonl):
    trace = load_mooncake_jsonl(mooncake_jsonl)
    scaling = TraceScaling(time_scale=2.0, length_scale=0.05, max_input_tokens=60, max_output_tokens=5)
    items = schedule(trace, scaling)
    assert [i.at_s for i in items] == [0.0, 2.0, 5.0]
    # 1500 * 0.05 = 75 -> clamped to 60; 300 * 0.05 = 15; 1100 * 0.05 = 55
    assert [i.input_tokens for i in items] == [60, 15, 55]
    # 20 * 0.05 = 1; 1 * 0.05 rounds to 0 -> at least 1; 7 * 0.05 = 0.35 -> 1
    assert [i.output_tokens for i in items] == [1, 1, 1]
    # 512 * 0.05 = 25.6 -> 26-token blocks; 60 tokens need 3 blocks, 15 need 1, 55 need 3
    assert [i.prefix_blocks for i in items] == [(0, 1, 2), (9,), (0, 1, 3)]
    assert {i.block_tokens for i in items} == {26}
    assert "x0.05" in scaling.describe(trace, items) and "26 tokens" in scaling.describe(trace, items)


def test_schedule_without_hash_ids_has_no_prefix_blocks(azure_csv):
    items = schedule(load_azure_csv(azure_csv), TraceScaling(length_scale=0.5))
    assert [(i.input_tokens, i.output_tokens) for i in items] == [(187, 22), (198, 54), (440, 28)]
    assert all(i.prefix_blocks == () and i.block_tokens == 0 for i in items)


@needs_shared
def test_shared_azure_trace():
    trace = load_trace("azure", SHARED_TRACES)
    assert len(trace.requests) == 19366
    arrivals = [r.arrival_s for r in trace.requests]
    assert arrivals == sorted(arrivals) and 55 * 60 < arrivals[-1] < 60 * 60
    assert all(r.input_tokens > 0 and r.output_tokens >= 0 for r in trace.requests)


@needs_shared
def test_shared_mooncake_trace_has_shared_prefixes():
    trace = load_trace("mooncake", SHARED_TRACES)
    assert len(trace.requests) == 12031
    first_blocks = [r.hash_ids[0] for r in trace.requests if r.hash_ids]
    assert len(set(first_blocks)) < len(first_blocks) / 2  # many requests share their first block
    items = schedule(trace, TraceScaling(time_scale=1.0, length_scale=1 / 32, window_s=60, max_input_tokens=1024))
    assert items and all(i.block_tokens == 16 and 1 <= i.input_tokens <= 1024 for i in items)
    assert all(len(i.prefix_blocks) <= -(-i.input_tokens // 16) for i in items)
