"""The locustfile and `pdserve loadtest` end to end against a fake OpenAI server (no vLLM; ~20 s)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.records import read_records
from tests.unit.fake_openai import serve_fake

# Locust runs in a subprocess only: importing it here would gevent-monkey-patch the test process after other
# test modules already imported ssl (via Ray), which ends in a RecursionError at collection.
if importlib.util.find_spec("locust") is None:
    pytest.skip("the load test needs the loadtest extra: pip install -e '.[loadtest]'", allow_module_level=True)
pytest.importorskip("matplotlib", reason="the load test needs the loadtest extra: pip install -e '.[loadtest]'")

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_pdserve_loadtest_steady_against_a_fake_server(tmp_path):
    out = tmp_path / "results"
    with serve_fake(fail_every=7) as url:
        proc = run([sys.executable, "-m", "serving.cli", "loadtest", "--host", url, "-u", "2", "--duration", "4s",
                    "--endpoint", "mixed", "--tokenizer", "none", "--prompt-tokens", "20", "--output-tokens", "6",
                    "--progress-interval", "1", "--out", str(out)])
    assert proc.returncode == 1, proc.stdout + proc.stderr  # Locust's exit code when some requests failed
    assert "[loadtest]" in proc.stdout and "goodput" in proc.stdout
    records = read_records(out / "records.jsonl")
    ok = [r for r in records if r.ok]
    assert len(ok) >= 10 and {r.endpoint for r in ok} == {"chat", "completions"}
    assert any(not r.ok and r.error == "fake failure" for r in records)
    for r in ok:
        assert 0 < r.ttft_s <= r.e2e_s
        assert r.completion_tokens == r.expected_completion_tokens == 6 and r.usage_reported
        assert r.prompt_tokens == r.expected_prompt_tokens == 20 and not r.prompt_exact
        assert r.users is not None and r.replicas == {"decode": "fake-1"}
        assert len(r.itl_s) == 5 and r.tpot_s > 0
    report = json.loads((out / "report.json").read_text())
    assert report["requests"] == len(records) and report["failed"] == len(records) - len(ok)
    for name in ("report.md", "latency_cdfs.png", "timeline.png", "locust.html", "locust_stats.csv"):
        assert (out / name).stat().st_size > 0, name
    stats = (out / "locust_stats.csv").read_text()
    assert all(f"{kind},chat" in stats for kind in ("TTFT", "TPOT", "ITL", "E2E"))


def test_trace_replay_is_open_loop_and_ends_by_itself(tmp_path):
    rows = [{"timestamp": t, "input_length": 2048, "output_length": 400, "hash_ids": [0, 1, 2, 3]}
            for t in (0, 0, 0, 0, 500, 1000, 1000, 1500)]
    trace = tmp_path / "mini.jsonl"
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "trace"
    with serve_fake(token_delay_s=0.5) as url:  # each answer takes 2 s: long enough to see them overlap
        proc = run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
                    "--only-summary", "--host", url, "--shape", "trace", "--trace", str(trace), "--time-scale", "2",
                    "--length-scale", "0.01", "--tokenizer", "none", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_records(out / "records.jsonl")
    assert len(records) == 8 and all(r.ok for r in records)
    # arrivals at 0, 0, 0, 0, 1, 2, 2, 3 s (x2); four at once means no request waited for another
    scheduled = sorted(r.scheduled_s - records[0].scheduled_s for r in records)
    assert scheduled == pytest.approx([0, 0, 0, 0, 1, 2, 2, 3], abs=0.01)
    # Open loop: the four due at once were all in flight together (a closed loop would send each after the
    # previous answer), whatever the delay a loaded host adds to sending them.
    first = sorted(records, key=lambda r: r.scheduled_s)[:4]
    assert max(r.offset_s for r in first) < min(r.offset_s + r.e2e_s for r in first)
    assert {(r.expected_prompt_tokens, r.completion_tokens) for r in records} == {(20, 4)}
    assert "x2" in (out / "report.md").read_text()


def test_pdserve_loadtest_runs_from_the_built_wheel_outside_a_checkout(tmp_path):
    """What `pip install pdserve[loadtest]` gives: the wheel built from this tree, installed apart, run from a
    folder with no checkout in it (its imports must come from the installed files)."""
    import shutil

    src, dist, site, elsewhere = (tmp_path / name for name in ("src", "dist", "site", "elsewhere"))
    elsewhere.mkdir()
    src.mkdir()
    # A clean copy of the sources: an in-tree build/ left by an earlier build would hide a missing package.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("serving", "loadtest"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("pdserve-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # before the checkout's editable install on the path
    out = elsewhere / "results"
    with serve_fake() as url:
        proc = subprocess.run([sys.executable, "-m", "serving.cli", "loadtest", "--host", url, "-u", "1",
                               "--duration", "3s", "--tokenizer", "none", "--prompt-tokens", "8",
                               "--output-tokens", "4", "--out", str(out)],
                              cwd=elsewhere, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{site}/loadtest/locustfile.py" in proc.stdout  # the installed copy ran, not the checkout's
    assert read_records(out / "records.jsonl") and (out / "report.md").exists()
