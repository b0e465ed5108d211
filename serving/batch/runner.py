"""One shard of a batch: recover what a previous run wrote, send the rest with bounded concurrency, summarize.

Idempotent: the ids already in the shard's output file, and the ids whose failure in its error file is final
(a 4xx answer, a malformed line), are skipped. Retryable failures (connection errors, timeouts, 408/429/5xx
after all retries) are taken out of the error file and sent again, so after a rerun each line of the shard is
in exactly one of the two files. Exit codes: 0 every line answered; 3 some lines still failed with retryable
errors (they are in the error file; a Job retry resends them); 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serving.batch.client import BatchClient, RetryPolicy
from serving.batch.inputs import BatchRequest, MalformedLine, read_shard
from serving.batch.results import (
    ResultLog,
    ShardFiles,
    ShardLock,
    error_record,
    is_retryable,
    is_success,
    new_record_id,
    record_key,
    recover,
    rewrite,
)

EXIT_OK, EXIT_RETRYABLE_LEFT, EXIT_SIGINT, EXIT_SIGTERM = 0, 3, 130, 143


@dataclass(frozen=True)
class BatchJobConfig:
    input: Path
    output_dir: Path
    shard_index: int = 0
    shard_count: int = 1
    endpoint: str = "http://127.0.0.1:8000"
    concurrency: int = 8
    api_key: str | None = None
    timeout_s: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: bool = True


@dataclass
class ShardSummary:
    shard_index: int
    shard_count: int
    assigned: int = 0
    """Lines of the input that belong to this shard."""
    skipped: int = 0
    """Already answered by an earlier run (in the output, or a final failure in the error file)."""
    recovered_partial_bytes: int = 0
    """Bytes of a torn last line truncated from the result files before resuming."""
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    """Answered with a final error: a non-retryable HTTP status, or a malformed input line."""
    malformed: int = 0
    retryable_left: int = 0
    """Still failing with a retryable error after all retries; resent by the next run."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    interrupted: str | None = None
    failed_ids: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_SIGTERM if self.interrupted == "SIGTERM" else EXIT_SIGINT
        return EXIT_RETRYABLE_LEFT if self.retryable_left else EXIT_OK

    def text(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        lines = [
            (f"shard {self.shard_index}/{self.shard_count}: {self.assigned} lines, {self.skipped} already done, "
             f"{self.sent} sent in {self.elapsed_s:.1f}s ({rate:.2f}/s)"),
            (f"  ok {self.succeeded}, failed {self.failed} (malformed {self.malformed}), "
             f"retryable left {self.retryable_left}; tokens in {self.prompt_tokens}, out {self.completion_tokens}"),
        ]
        if self.recovered_partial_bytes:
            lines.append(f"  recovered: truncated a partial last line ({self.recovered_partial_bytes} bytes)")
        if self.failed_ids:
            lines.append(f"  errors (see the .errors.jsonl file): {', '.join(self.failed_ids[:10])}"
                         + (" ..." if len(self.failed_ids) > 10 else ""))
        if self.interrupted:
            lines.append(f"  interrupted by {self.interrupted}: rerun the same command to finish")
        return "\n".join(lines)

    def count(self, record: dict[str, Any]) -> None:
        if is_success(record):
            self.succeeded += 1
            usage = (record["response"]["body"] or {}).get("usage") or {}
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)
            return
        if is_retryable(record):
            self.retryable_left += 1
        else:
            self.failed += 1
        self.failed_ids.append(str(record.get("custom_id") or f"line {record['error']['line']}"))


def run_shard(config: BatchJobConfig, transport: httpx.AsyncBaseTransport | None = None) -> ShardSummary:
    """Runs one shard to the end (or to SIGINT/SIGTERM); raises ValueError for an unusable input or shard."""
    items = read_shard(config.input, config.shard_index, config.shard_count)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    files = ShardFiles.of(config.output_dir, config.shard_index, config.shard_count)
    lock = ShardLock(files.lock)
    try:
        summary = ShardSummary(config.shard_index, config.shard_count, assigned=len(items))
        done = _resume(files, summary)
        pending = [item for item in items if item.key not in done]
        summary.skipped = len(items) - len(pending)
        started = time.monotonic()
        asyncio.run(_run(config, files, pending, summary, transport))
        summary.elapsed_s = time.monotonic() - started
        _write_summary(files.summary, summary)
        return summary
    finally:
        lock.release()


def _resume(files: ShardFiles, summary: ShardSummary) -> set[tuple[str, str | int]]:
    outputs, dropped_out = recover(files.output)
    errors, dropped_err = recover(files.errors)
    summary.recovered_partial_bytes = dropped_out + dropped_err
    final_errors = [record for record in errors if not is_retryable(record)]
    if len(final_errors) != len(errors):
        rewrite(files.errors, final_errors)  # retryable failures are sent again below
    return {record_key(record) for record in outputs + final_errors}


async def _run(config: BatchJobConfig, files: ShardFiles, pending: list, summary: ShardSummary,
               transport: httpx.AsyncBaseTransport | None) -> None:
    output, errors = ResultLog(files.output), ResultLog(files.errors)
    progress = _progress_bar(config, summary)

    def write(record: dict[str, Any]) -> None:
        (output if is_success(record) else errors).append(record)
        summary.count(record)
        progress.update(1)

    requests: list[BatchRequest] = []
    for item in pending:
        if isinstance(item, MalformedLine):
            summary.malformed += 1
            write(error_record(new_record_id(), item.custom_id, "invalid_request_line", item.message, item.line))
        else:
            requests.append(item)
    todo = iter(requests)
    try:
        async with BatchClient(config.endpoint, api_key=config.api_key, timeout_s=config.timeout_s,
                               concurrency=config.concurrency, retry=config.retry, transport=transport) as client:

            async def worker() -> None:
                for request in todo:  # one shared iterator: each request is taken by exactly one worker
                    summary.sent += 1
                    write(await client.send(request))

            workers = [asyncio.ensure_future(worker()) for _ in range(max(1, config.concurrency))]
            _on_signals(workers, summary)
            await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in workers:
                task.cancel()  # only a worker that failed (e.g. disk full) leaves others running here
            for result in await asyncio.gather(*workers, return_exceptions=True):
                if isinstance(result, Exception):
                    raise result
    finally:
        progress.close()
        output.close()
        errors.close()


def _on_signals(workers: list[asyncio.Future], summary: ShardSummary) -> None:
    loop = asyncio.get_running_loop()

    def stop(name: str) -> None:
        summary.interrupted = name
        for task in workers:
            task.cancel()  # in-flight requests are abandoned; their lines are not written, so a rerun sends them

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop, sig.name)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no support
            pass


def _progress_bar(config: BatchJobConfig, summary: ShardSummary):
    from tqdm import tqdm

    return tqdm(total=summary.assigned, initial=summary.skipped, unit="req", file=sys.stderr,
                desc=f"shard {config.shard_index}/{config.shard_count}", disable=not config.progress,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)


def _write_summary(path: Path, summary: ShardSummary) -> None:
    data = asdict(summary)
    data["exit_code"] = summary.exit_code
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
