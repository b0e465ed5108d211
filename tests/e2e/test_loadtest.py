"""`pdserve loadtest` against the live P/D stack: a short steady run and a short Mooncake replay.

Each writes records, a report and plots; every request must have 0 < TTFT <= e2e, the output length the
request asked for (ignore_eos) as `usage` reports it, and the prompt length the builder counted with the
model's tokenizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.records import RequestRecord, read_records
from loadtest.traces import traces_dir

pytestmark = pytest.mark.e2e
pytest.importorskip("locust", reason="the load test needs locust: pip install -e '.[loadtest]'")
pytest.importorskip("matplotlib", reason="the load test needs matplotlib: pip install -e '.[loadtest]'")

ROOT = Path(__file__).resolve().parents[2]


def loadtest(stack, out: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "serving.cli", "loadtest", "--host", stack.base_url, "--out", str(out),
            "--metrics-url", f"http://127.0.0.1:{stack.metrics_port}/metrics", "--metrics-interval", "2",
            "--slo-ttft", "5", "--slo-tpot", "0.5", *args]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def check_records(records: list[RequestRecord]) -> None:
    assert records
    failed = [r.error for r in records if not r.ok]
    assert not failed, failed
    for r in records:
        assert 0 < r.ttft_s <= r.e2e_s, r
        assert r.usage_reported and r.completion_tokens == r.expected_completion_tokens, r
        assert r.prompt_exact and r.prompt_tokens == r.expected_prompt_tokens, r
        if r.completion_tokens > 1:
            assert r.tpot_s > 0 and r.itl_s


def check_outputs(out: Path, records: list[RequestRecord]) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["requests"] == len(records) and report["failed"] == 0
    assert report["throughput_rps"] > 0 and report["output_tokens_per_s"] > 0
    for name in ("report.md", "latency_cdfs.png", "timeline.png", "locust.html", "locust_stats.csv"):
        assert (out / name).stat().st_size > 0, name
    samples = [json.loads(line) for line in (out / "replicas.jsonl").read_text().splitlines()]
    if any({"prefill", "decode"} <= set(s["pools"]) for s in samples):
        assert (out / "replicas.png").stat().st_size > 0
    return report


def test_steady_run_measures_every_request(pd_stack, tmp_path):
    out = tmp_path / "steady"
    proc = loadtest(pd_stack, out, "--shape", "steady", "-u", "2", "--duration", "20s", "--endpoint", "mixed",
                    "--prompt-tokens", "96", "--output-tokens", "16", "--progress-interval", "5")
    assert "[loadtest]" in proc.stdout  # the progress line
    records = read_records(out / "records.jsonl")
    check_records(records)
    assert {r.endpoint for r in records} == {"chat", "completions"}
    assert {r.prompt_tokens for r in records} == {96} and all(r.users for r in records)
    assert all(set(r.replicas) == {"prefill", "decode"} for r in records)
    check_outputs(out, records)
    print("\n" + (out / "report.md").read_text())


@pytest.mark.skipif(not traces_dir(ROOT).is_dir(), reason=f"shared traces not found at {traces_dir(ROOT)}")
def test_mooncake_replay_is_open_loop(pd_stack, tmp_path):
    out = tmp_path / "mooncake"
    loadtest(pd_stack, out, "--shape", "trace", "--trace", "mooncake", "--max-requests", "12", "--time-scale", "0.5",
             "--length-scale", "0.03125", "--max-input-tokens", "384", "--max-output-tokens", "16",
             "--duration", "120s")
    records = read_records(out / "records.jsonl")
    assert len(records) == 12
    check_records(records)
    # the trace's first ten requests arrive together: all were sent at once, none waited for another
    first = sorted(records, key=lambda r: r.offset_s)[:10]
    assert max(r.offset_s for r in first) - min(r.offset_s for r in first) < 1.0
    report = check_outputs(out, records)
    assert "mooncake" in report["info"]["trace"] and "x0.03125" in report["info"]["trace"]
    print("\n" + (out / "report.md").read_text())
