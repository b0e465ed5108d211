"""The `pdserve batch` and `pdserve batch merge` subcommands: parse, build a config, run. No batch logic here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
SHARD_COUNT_ENV = "JOB_COMPLETIONS"  # not set by Kubernetes: the Job manifest sets it to spec.completions
ENDPOINT_ENV = "PDSERVE_ENDPOINT"
EXIT_USAGE, EXIT_BUSY = 2, 4

DESCRIPTION = f"""\
Answer an OpenAI Batch input file (JSONL lines of custom_id, method, url, body) with a pdserve or any
OpenAI-compatible endpoint. Each shard takes the lines whose sha256(custom_id) mod shard-count equals its
index, and appends results to <output>/shard-IIIII-of-CCCCC.output.jsonl (2xx answers) and .errors.jsonl
(everything else, malformed lines included, each named by line number). Rerunning a shard resumes it: lines
already answered are skipped, retryable failures are sent again.

Shard index and count default to ${SHARD_INDEX_ENV} (set by Kubernetes for Indexed Jobs) and ${SHARD_COUNT_ENV}
(set it to the Job's completions), else 0 and 1. Exit codes: 0 done; 2 unusable input or arguments (duplicate
custom_ids, missing file); 3 some lines still fail with retryable errors (rerun to retry them); 4 another
process holds the shard; 130/143 interrupted."""

EPILOG = """examples:
  pdserve batch --input requests.jsonl --output results/ --shard-index 0 --shard-count 2
  pdserve batch --input requests.jsonl --output results/ --shard-index 1 --shard-count 2 --concurrency 16
  pdserve batch merge --input requests.jsonl --output results/          # -> results/merged.jsonl
"""


def add_batch_parser(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser("batch", help="answer an OpenAI Batch JSONL file, one shard per process/pod (resumable)",
                           description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("--input", type=Path, help="the Batch input file (JSONL)")
    batch.add_argument("--output", type=Path, help="results folder (created; shared by all shards)")
    batch.add_argument("--shard-index", type=int, help=f"this shard (default ${SHARD_INDEX_ENV}, else 0)")
    batch.add_argument("--shard-count", type=int, help=f"number of shards (default ${SHARD_COUNT_ENV}, else 1)")
    batch.add_argument("--endpoint", help=f"server root or .../v1 URL (default ${ENDPOINT_ENV}, else http://127.0.0.1:8000)")
    batch.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    batch.add_argument("--api-key", help="bearer token (default $OPENAI_API_KEY, else none)")
    batch.add_argument("--max-retries", type=int, default=5, help="retries of a 408/429/5xx/connection failure (default 5)")
    batch.add_argument("--timeout", type=float, default=600.0, help="seconds per attempt (default 600)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    batch.set_defaults(func=_run)
    nested = batch.add_subparsers(dest="batch_command", metavar="{merge}")
    merge = nested.add_parser("merge", help="join the shards' results in input order; report missing ids",
                              description="Join every shard's results into one file, one record per input line, "
                                          "ordered as the input. Exits 1 if any line has no result.")
    merge.add_argument("--input", type=Path, required=True, help="the Batch input file the shards ran")
    merge.add_argument("--output", type=Path, required=True, help="the results folder the shards wrote")
    merge.add_argument("--out", type=Path, help="merged file (default <output>/merged.jsonl)")
    merge.set_defaults(func=_merge)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"${name}={value!r} is not an integer") from None


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"pdserve batch: {message}", file=sys.stderr, flush=True)
    return code


def _run(args: argparse.Namespace) -> int:
    from serving.batch.client import RetryPolicy
    from serving.batch.results import CorruptResultsError, ShardBusyError
    from serving.batch.runner import BatchJobConfig, run_shard

    if args.input is None or args.output is None:
        return _fail("--input and --output are required (or use `pdserve batch merge`)")
    try:
        index = args.shard_index if args.shard_index is not None else _env_int(SHARD_INDEX_ENV, 0)
        count = args.shard_count if args.shard_count is not None else _env_int(SHARD_COUNT_ENV, 1)
    except ValueError as exc:
        return _fail(str(exc))
    if count < 1 or not 0 <= index < count or args.concurrency < 1 or args.max_retries < 0:
        return _fail(f"need 0 <= shard index < shard count, concurrency >= 1, retries >= 0 (got index {index}, "
                     f"count {count}, concurrency {args.concurrency}, retries {args.max_retries})")
    config = BatchJobConfig(
        input=args.input, output_dir=args.output, shard_index=index, shard_count=count,
        endpoint=args.endpoint or os.environ.get(ENDPOINT_ENV) or "http://127.0.0.1:8000",
        concurrency=args.concurrency, api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or None,
        timeout_s=args.timeout, retry=RetryPolicy(max_retries=args.max_retries), progress=not args.no_progress,
    )
    print(f"pdserve batch: shard {index}/{count} of {config.input} -> {config.output_dir}/ via {config.endpoint} "
          f"(concurrency {config.concurrency})", file=sys.stderr, flush=True)
    try:
        summary = run_shard(config)
    except ShardBusyError as exc:
        return _fail(str(exc), EXIT_BUSY)
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, CorruptResultsError) as exc:
        return _fail(str(exc))
    print(summary.text(), flush=True)
    return summary.exit_code


def _merge(args: argparse.Namespace) -> int:
    from serving.batch.merge import merge_results

    if not args.output.is_dir():
        return _fail(f"{args.output} is not a folder of shard results")
    try:
        summary = merge_results(args.input, args.output, args.out or args.output / "merged.jsonl")
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    print(summary.text(), flush=True)
    return summary.exit_code
