"""SSE parsing and per-request timing of the load test: role chunk, usage-only chunk, [DONE], error events."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from loadtest.client import RequestSpec, StreamClient, api_base, replica_headers, request_body
from loadtest.records import StreamTiming, compute_timing
from loadtest.sse import ChunkKind, SSEEvent, SSEParser, iter_events, parse_chunk


def sse(*payloads: object) -> str:
    return "".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n" for p in payloads)


ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def chat(text: str, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def test_parser_joins_data_lines_skips_comments_and_reads_event_names():
    parser = SSEParser()
    lines = [": keep-alive", "event: error", "data: {\"a\":", "data: 1}", "", "data: x", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert events == [SSEEvent('{"a":\n1}', "error"), SSEEvent("x", "message")]


def test_last_event_without_blank_line_is_not_lost():
    assert list(iter_events(["data: [DONE]"])) == [SSEEvent("[DONE]")]


def test_chat_role_chunk_is_a_delta_without_content():
    chunk = parse_chunk(SSEEvent(json.dumps(ROLE)))
    assert chunk.kind is ChunkKind.DELTA and not chunk.has_content


def test_completions_text_and_finish_reason():
    chunk = parse_chunk(SSEEvent(json.dumps({"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]})))
    assert (chunk.kind, chunk.text, chunk.finish_reason) == (ChunkKind.DELTA, "hi", "length")


def test_usage_only_chunk_and_done():
    usage = parse_chunk(SSEEvent(json.dumps(USAGE)))
    assert usage.kind is ChunkKind.USAGE and usage.usage["completion_tokens"] == 3
    assert parse_chunk(SSEEvent("[DONE]")).kind is ChunkKind.DONE


@pytest.mark.parametrize("event", [
    SSEEvent(json.dumps({"error": {"message": "boom", "code": 500}})),
    SSEEvent(json.dumps({"message": "boom"}), "error"),
    SSEEvent("boom", "error"),
])
def test_error_events(event):
    chunk = parse_chunk(event)
    assert chunk.kind is ChunkKind.ERROR and chunk.error == "boom"


def test_undecodable_data_is_an_error():
    assert parse_chunk(SSEEvent("{not json")).kind is ChunkKind.ERROR


def test_compute_timing_by_hand():
    # sent at 0; content at 0.5, 0.6, 0.8; stream ends at 1.0; usage says 3 tokens
    timing = compute_timing(0.0, [0.5, 0.6, 0.8], 1.0, 3)
    assert timing.ttft_s == 0.5 and timing.e2e_s == 1.0
    assert timing.tpot_s == pytest.approx((1.0 - 0.5) / 2)
    assert timing.itl_s == pytest.approx([0.1, 0.2])
    assert compute_timing(0.0, [0.5], 0.7, 1).tpot_s is None  # one token: no TPOT
    assert compute_timing(0.0, [], 0.7, 0).ttft_s is None


def test_stream_timing_starts_at_first_content_not_role_chunk():
    timing = StreamTiming(t0=10.0)
    events = list(iter_events(sse(ROLE, chat("a"), chat("b"), chat("", "length"), USAGE, "[DONE]").splitlines()))
    for t, event in zip([10.1, 10.3, 10.4, 10.5, 10.6, 10.7], events):
        timing.on_chunk(t, parse_chunk(event))
    result = timing.timing(10.7)
    assert result.ttft_s == pytest.approx(0.3)
    assert timing.completion_tokens == 3 and timing.done and timing.problem() is None
    assert result.tpot_s == pytest.approx((0.7 - 0.3) / 2)
    assert result.itl_s == pytest.approx([0.1])


def test_stream_without_usage_counts_content_chunks_and_no_content_is_a_problem():
    timing = StreamTiming(0.0)
    timing.on_chunk(0.1, parse_chunk(SSEEvent(json.dumps(ROLE))))
    assert timing.problem() == "stream ended without content"
    timing.on_chunk(0.2, parse_chunk(SSEEvent(json.dumps(chat("x")))))
    assert timing.completion_tokens == 1 and timing.problem() is None


def test_api_base_and_body():
    for host in ("http://h:8000", "http://h:8000/", "http://h:8000/v1/"):
        assert api_base(host) == "http://h:8000/v1"
    spec = RequestSpec("chat", "hello", 4, "steady")
    body = request_body(spec, "m")
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["stream_options"] == {"include_usage": True} and body["min_tokens"] == 4 and body["ignore_eos"]
    plain = request_body(RequestSpec("completions", "hello", 4, "steady"), "m", ignore_eos=False)
    assert plain["prompt"] == "hello" and "ignore_eos" not in plain and "min_tokens" not in plain


def test_replica_headers():
    headers = httpx.Headers({"X-PDServe-Prefill-Replica": "p1", "X-PDServe-Decode-Replica": "d1", "X-Other": "x"})
    assert replica_headers(headers) == {"prefill": "p1", "decode": "d1"}


def _client(handler, clock_step: float = 1.0) -> StreamClient:
    ticks = itertools.count()
    return StreamClient(httpx.Client(transport=httpx.MockTransport(handler)), "http://x/v1", "m",
                        clock=lambda: next(ticks) * clock_step)


def test_client_times_a_chat_stream_with_a_fake_clock():
    def handler(request):
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        assert body["stream"] and body["max_tokens"] == 3
        return httpx.Response(200, text=sse(ROLE, chat("a"), chat("b"), chat("c", "length"), USAGE, "[DONE]"),
                              headers={"X-PDServe-Decode-Replica": "d1"})

    # clock: run_t0=0, t0=1, chunks at 2 (role), 3, 4, 5 (content), 6 (usage), 7 ([DONE]), end=8
    record = _client(handler).send(RequestSpec("chat", "p", 3, "steady", expected_prompt_tokens=7), users=2)
    assert record.ok and record.offset_s == 1 and record.users == 2
    assert (record.ttft_s, record.e2e_s, record.itl_s) == (2, 7, [1, 1])
    assert record.tpot_s == pytest.approx((7 - 2) / 2)
    assert (record.prompt_tokens, record.completion_tokens, record.expected_completion_tokens) == (7, 3, 3)
    assert record.usage_reported and record.content_chunks == 3 and record.replicas == {"decode": "d1"}


def test_client_records_http_errors_and_mid_stream_errors():
    record = _client(lambda r: httpx.Response(400, json={"error": {"message": "bad"}})).send(
        RequestSpec("completions", "p", 3, "steady"))
    assert not record.ok and record.status == 400 and "bad" in record.error

    mid = sse({"choices": [{"index": 0, "text": "a"}]}, {"error": {"message": "engine died"}})
    record = _client(lambda r: httpx.Response(200, text=mid)).send(RequestSpec("completions", "p", 3, "steady"))
    assert not record.ok and record.error == "engine died" and record.ttft_s is not None


def test_client_records_connection_errors():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    record = _client(handler).send(RequestSpec("chat", "p", 3, "steady"))
    assert not record.ok and record.error.startswith("ConnectError") and record.status is None
