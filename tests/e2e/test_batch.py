"""`pdserve batch` against the real P/D stack: 2 shards, one killed midway and resumed, merged; named errors.

Each shard runs as the user's own command (`python -m serving.cli batch ...`) in a subprocess.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.batch.inputs import shard_of
from serving.batch.results import ShardFiles, read_records

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"
TOPICS = ["France", "Japan", "the Moon", "rivers", "bread", "chess", "winter", "owls", "music", "the sea"]


def _line(i: int, topic: str) -> dict:
    if i % 2:
        body = {"model": MODEL, "prompt": f"A short fact about {topic}:", "max_tokens": 16, "temperature": 0}
        return {"custom_id": f"req-{i:02d}", "method": "POST", "url": "/v1/completions", "body": body}
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Say one thing about {topic}."}],
            "max_tokens": 16, "temperature": 0}
    return {"custom_id": f"req-{i:02d}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _batch(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "serving.cli", "batch", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout_s: float = 600) -> str:
    stdout, stderr = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout}\n{stderr[-3000:]}"
    return stdout


def _text(record: dict) -> str:
    choice = record["response"]["body"]["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def test_two_shards_one_killed_and_resumed_merge_to_one_answer_per_line(pd_stack, tmp_path):
    lines = [_line(i, topic) for i, topic in enumerate(TOPICS)]
    ids = [line["custom_id"] for line in lines]
    by_shard = [[i for i in ids if shard_of(("id", i), 2) == s] for s in (0, 1)]
    victim = max((0, 1), key=lambda s: len(by_shard[s]))  # the shard with more lines is killed midway
    other = 1 - victim
    assert len(by_shard[victim]) >= 4 and by_shard[other], by_shard
    path = _write(tmp_path / "requests.jsonl", lines)
    out = tmp_path / "results"
    common = ["--input", str(path), "--output", str(out), "--shard-count", "2", "--no-progress"]
    victim_args = [*common, "--shard-index", str(victim), "--endpoint", pd_stack.base_url, "--concurrency", "1"]

    running = _batch(*common, "--shard-index", str(other), "--endpoint", pd_stack.api_url, "--concurrency", "2")
    killed = _batch(*victim_args)
    output = ShardFiles.of(out, victim, 2).output
    deadline = time.monotonic() + 300
    while not (output.exists() and output.read_bytes().count(b"\n") >= 2):
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline, f"shard {victim} wrote < 2 lines in 300 s"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    killed_at = len(read_records(output))
    assert 2 <= killed_at < len(by_shard[victim]), f"shard {victim}: {killed_at}/{len(by_shard[victim])} when killed"
    print(f"shard {victim} killed (SIGKILL) after {killed_at}/{len(by_shard[victim])} lines")
    print(_finish(running))

    resumed = _finish(_batch(*victim_args))
    print(resumed)
    assert f"{len(by_shard[victim])} lines, {killed_at} already done" in resumed

    for index in (0, 1):
        files = ShardFiles.of(out, index, 2)
        written = [r["custom_id"] for r in read_records(files.output)]
        assert sorted(written) == sorted(by_shard[index]), f"shard {index}: {written}"  # no duplicates, none missing
        assert read_records(files.errors) == []

    merge = subprocess.run([sys.executable, "-m", "serving.cli", "batch", "merge", "--input", str(path),
                            "--output", str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
    print(merge.stdout)
    assert merge.returncode == 0, merge.stdout + merge.stderr
    merged = read_records(out / "merged.jsonl")
    assert [r["custom_id"] for r in merged] == ids
    for record in merged:
        assert record["id"].startswith("batch_req_") and record["error"] is None
        assert record["response"]["status_code"] == 200 and record["response"]["request_id"]
        body = record["response"]["body"]
        assert body["model"] == MODEL and body["usage"]["completion_tokens"] > 0
        assert _text(record).strip(), record
    assert f"merged {len(ids)}/{len(ids)} lines" in merge.stdout and "missing 0" in merge.stdout


def test_malformed_lines_and_refused_requests_are_named_errors(pd_stack, tmp_path):
    good = [_line(0, "France"), _line(1, "Japan")]
    unknown_model = {**_line(2, "owls"), "custom_id": "unknown-model"}
    unknown_model["body"] = {**unknown_model["body"], "model": "no-such-model"}
    lines = [
        good[0],
        "{this is not json",                                           # line 2
        {k: v for k, v in good[1].items() if k != "custom_id"},        # line 3
        {**good[1], "custom_id": "get", "method": "GET"},               # line 4
        unknown_model,                                                  # line 5: the server answers 404
        good[1],
    ]
    path = _write(tmp_path / "requests.jsonl", lines)
    out = tmp_path / "results"
    stdout = _finish(_batch("--input", str(path), "--output", str(out), "--endpoint", pd_stack.api_url,
                            "--no-progress"))
    print(stdout)
    files = ShardFiles.of(out, 0, 1)
    assert sorted(r["custom_id"] for r in read_records(files.output)) == ["req-00", "req-01"]
    errors = {(r["error"] or {}).get("line") or r["custom_id"]: r for r in read_records(files.errors)}
    assert errors[2]["error"]["message"].startswith("line 2: not valid JSON")
    assert errors[3]["error"]["message"] == "line 3: 'custom_id' must be a non-empty string"
    assert errors[4]["custom_id"] == "get" and "line 4: 'method' must be \"POST\"" in errors[4]["error"]["message"]
    refused = errors["unknown-model"]["response"]
    assert refused["status_code"] == 404 and "no-such-model" in json.dumps(refused["body"])
    assert "malformed 3" in stdout

    duplicate = _write(tmp_path / "dup.jsonl", [good[0], good[1], good[0]])
    proc = _batch("--input", str(duplicate), "--output", str(tmp_path / "dup"), "--endpoint", pd_stack.api_url)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "duplicate custom_id: 'req-00' (lines 1, 3)" in stderr
