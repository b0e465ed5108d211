"""Percentiles, throughput, error rate and goodput against hand-computed cases; report files and plots."""

from __future__ import annotations

import json

import pytest

from loadtest.records import RecordWriter, RequestRecord, read_records
from loadtest.report import SLO, Distribution, main, percentile, render_markdown, summarize, write_report


def rec(offset, e2e, ttft, tpot, ok=True, prompt=10, completion=5, itl=(), error=None) -> RequestRecord:
    return RequestRecord(request_id=f"r{offset}", endpoint="chat", source="steady", start_unix=0.0,
                         offset_s=offset, ok=ok, error=error, ttft_s=ttft, e2e_s=e2e, tpot_s=tpot,
                         itl_s=list(itl), prompt_tokens=prompt, completion_tokens=completion)


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)  # rank 2.7: 3 + 0.7 * (4 - 3)
    assert percentile([1, 2, 3, 4], 99) == pytest.approx(3.97)
    assert percentile([10, 20, 30, 40, 50], 90) == pytest.approx(46.0)  # rank 3.6
    assert percentile([7], 99) == 7 and percentile([], 50) is None
    assert percentile([1, 2, 3, 4], 0) == 1 and percentile([1, 2, 3, 4], 100) == 4


def test_distribution():
    d = Distribution.of([0.1, 0.2, 0.3, 0.4])
    assert d.count == 4 and d.mean == pytest.approx(0.25) and d.p50 == pytest.approx(0.25)
    assert Distribution.of([]) == Distribution(0, None, None, None, None)


RECORDS = [
    rec(0.0, 2.0, 0.5, 0.05, itl=[0.05, 0.05]),  # meets both SLOs
    rec(1.0, 3.0, 1.5, 0.05, itl=[0.1]),  # TTFT 1.5 > 1.0
    rec(2.0, 4.0, 0.2, 0.30, itl=[0.3]),  # TPOT 0.3 > 0.1
    rec(3.0, 1.0, 0.4, None, completion=1),  # one token: judged by TTFT alone -> meets
    rec(5.0, 5.0, None, None, ok=False, prompt=None, completion=None, error="HTTP 500: boom"),  # ends at 10
]


def test_summary_by_hand():
    s = summarize(RECORDS, SLO(ttft_s=1.0, tpot_s=0.1))
    assert (s.requests, s.succeeded, s.failed) == (5, 4, 1)
    assert s.duration_s == 10.0  # first sent at 0, last finished at 5 + 5
    assert s.error_rate == pytest.approx(0.2)
    assert s.throughput_rps == pytest.approx(0.4)  # 4 ok / 10 s
    assert s.output_tokens_per_s == pytest.approx((5 + 5 + 5 + 1) / 10)
    assert s.input_tokens_per_s == pytest.approx(4.0)
    assert s.goodput_rps == pytest.approx(0.2)  # records 0 and 3
    assert s.slo_attainment == pytest.approx(0.4)
    assert s.ttft_s.p50 == pytest.approx(0.45)  # [0.2, 0.4, 0.5, 1.5]
    assert s.tpot_s.count == 3 and s.tpot_s.p50 == pytest.approx(0.05)
    assert s.itl_s.count == 4 and s.itl_s.p90 == pytest.approx(0.24)  # [.05, .05, .1, .3] rank 2.7
    assert s.e2e_s.p99 == pytest.approx(3.97)  # [1, 2, 3, 4]
    assert s.errors == {"HTTP 500: boom": 1}


def test_goodput_tightens_with_the_slo_and_an_explicit_duration():
    assert summarize(RECORDS, SLO(0.3, 1.0)).goodput_rps == pytest.approx(0.1)  # only TTFT 0.2
    assert summarize(RECORDS, SLO(10, 10), duration_s=20).goodput_rps == pytest.approx(0.2)  # 4 ok / 20 s
    assert summarize([], SLO(1, 1)).goodput_rps == 0.0


def test_markdown_and_json_report(tmp_path):
    summary = summarize(RECORDS, SLO(1.0, 0.1))
    text = render_markdown(summary, {"shape": "steady"})
    assert "- shape: steady" in text and "goodput: 0.200 req/s" in text and "error rate 20.0%" in text
    assert "| TTFT | 4 | 650.0 | 450.0 |" in text
    write_report(tmp_path, summary, {"shape": "steady"})
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["goodput_rps"] == pytest.approx(0.2) and data["ttft_s"]["p50"] == pytest.approx(0.45)
    assert data["info"] == {"shape": "steady"} and (tmp_path / "report.md").read_text() == text


def test_records_round_trip_and_report_cli(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    writer = RecordWriter(tmp_path / "run" / "records.jsonl")
    for r in RECORDS:
        writer.write(r)
    writer.close()
    assert read_records(tmp_path / "run" / "records.jsonl") == RECORDS
    (tmp_path / "run" / "replicas.jsonl").write_text(
        json.dumps({"offset_s": 0.0, "pools": {"prefill": {"healthy": 1}, "decode": {"healthy": 1, "target": 2}}})
        + "\n" + json.dumps({"offset_s": 5.0, "pools": {"prefill": {"healthy": 1}, "decode": {"healthy": 2}}}) + "\n")
    assert main([str(tmp_path / "run" / "records.jsonl"), "--slo-ttft", "1", "--slo-tpot", "0.1",
                 "--out", str(tmp_path / "out")]) == 0
    assert "goodput: 0.200 req/s" in capsys.readouterr().out
    for name in ("report.md", "report.json", "latency_cdfs.png", "timeline.png", "replicas.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name


def test_replay_lateness_is_reported():
    late = [rec(1.2, 1.0, 0.5, 0.05), rec(3.0, 1.0, 0.5, 0.05)]
    late[0].scheduled_s, late[1].scheduled_s = 1.0, 3.0
    s = summarize(late, SLO(1, 1))
    assert s.lateness_s.count == 2 and s.lateness_s.p50 == pytest.approx(0.1)
    assert "Replay: requests were sent 100.0 ms (p50)" in render_markdown(s)
    assert summarize(RECORDS, SLO(1, 1)).lateness_s.count == 0
