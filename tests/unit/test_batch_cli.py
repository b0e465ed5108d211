"""`pdserve batch` as a user runs it: env defaults, exit codes, and a shard killed midway then rerun (subprocess)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.batch.results import ShardFiles, read_records
from serving.cli import main
from tests.unit.batch_fakes import chat_line, serve_fake, write_input

ROOT = Path(__file__).resolve().parents[2]


def _batch(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "serving.cli", "batch", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not reach {n} lines")


def test_shard_defaults_come_from_the_indexed_job_env(tmp_path, monkeypatch, capsys):
    path = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(30)])
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("JOB_COMPLETIONS", "3")
    with serve_fake() as (url, calls):
        monkeypatch.setenv("PDSERVE_ENDPOINT", url)
        assert main(["batch", "--input", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    files = ShardFiles.of(tmp_path / "out", 2, 3)
    assert files.output.exists() and len(read_records(files.output)) == sum(calls.values()) > 0
    assert "shard 2/3: " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--output", "o"], {}, "--input and --output are required"),
        (["--input", "x", "--output", "o", "--shard-index", "3", "--shard-count", "3"], {}, "0 <= shard index"),
        (["--input", "x", "--output", "o"], {"JOB_COMPLETIONS": "four"}, "$JOB_COMPLETIONS='four' is not an integer"),
        (["--input", "absent.jsonl", "--output", "o"], {}, "absent.jsonl"),
    ],
)
def test_usage_errors_exit_2(tmp_path, monkeypatch, capsys, argv, env, message):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["batch", *argv]) == 2
    assert message in capsys.readouterr().err


def test_duplicate_ids_exit_2_naming_them(tmp_path, capsys):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a"), chat_line("dup"), chat_line("dup")])
    assert main(["batch", "--input", str(path), "--output", str(tmp_path / "o"), "--endpoint", "http://127.0.0.1:9"]) == 2
    assert "duplicate custom_id: 'dup' (lines 2, 3)" in capsys.readouterr().err


def test_merge_exits_1_and_names_missing_ids(tmp_path, capsys):
    path = write_input(tmp_path / "in.jsonl", [chat_line("a"), chat_line("b")])
    (tmp_path / "out").mkdir()
    assert main(["batch", "merge", "--input", str(path), "--output", str(tmp_path / "out")]) == 1
    assert "missing: a, b" in capsys.readouterr().out
    assert (tmp_path / "out" / "merged.jsonl").read_text() == ""


def test_a_killed_shard_resumes_without_duplicates(tmp_path):
    ids = [f"r{i:02d}" for i in range(12)]
    path = write_input(tmp_path / "in.jsonl", [chat_line(i) for i in ids])
    out = tmp_path / "out"
    files = ShardFiles.of(out, 0, 1)
    with serve_fake(delay_s=0.1) as (url, calls):
        args = ["--input", str(path), "--output", str(out), "--endpoint", url, "--concurrency", "1", "--no-progress"]
        first = _batch(*args)
        _wait_lines(files.output, 3, first)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        written = len(read_records(files.output))
        assert 3 <= written < 12
        with open(files.output, "ab") as output:  # as if the kill had landed in the middle of a write
            output.write(b'{"id": "batch_req_torn", "custom_id": "r1')
        second = _batch(*args)
        stdout, stderr = second.communicate(timeout=60)
        assert second.returncode == 0, stderr
    records = read_records(files.output)
    assert sorted(r["custom_id"] for r in records) == ids
    assert f"{written} already done" in stdout and "truncated a partial last line" in stdout
    assert sum(calls.values()) <= 12 + 1  # at most the one request in flight at the kill is sent twice
    assert files.output.read_bytes().endswith(b"\n")


def test_sigterm_stops_cleanly_and_the_rerun_finishes(tmp_path):
    ids = [f"r{i:02d}" for i in range(10)]
    path = write_input(tmp_path / "in.jsonl", [chat_line(i) for i in ids])
    out = tmp_path / "out"
    with serve_fake(delay_s=0.1) as (url, _):
        args = ["--input", str(path), "--output", str(out), "--endpoint", url, "--concurrency", "2", "--no-progress"]
        first = _batch(*args)
        _wait_lines(ShardFiles.of(out, 0, 1).output, 2, first)
        first.send_signal(signal.SIGTERM)
        stdout, _ = first.communicate(timeout=30)
        assert first.returncode == 143 and "interrupted by SIGTERM" in stdout
        second = _batch(*args)
        second.communicate(timeout=60)
        assert second.returncode == 0
        merge = subprocess.run([sys.executable, "-m", "serving.cli", "batch", "merge", "--input", str(path),
                                "--output", str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert merge.returncode == 0, merge.stdout + merge.stderr
    assert [r["custom_id"] for r in read_records(out / "merged.jsonl")] == ids
