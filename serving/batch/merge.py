"""`pdserve batch merge`: every shard's results joined into one file, one record per input line, in input order.

A line's record is its 2xx answer if any shard file has one, else its error record. Lines with no record at
all are reported as missing (the merged file then lacks them and the command exits 1): rerun the shards that
own them. Results from runs with different shard counts in one folder are merged too; an id answered more than
once is reported and its first record (by file name) is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batch.inputs import read_keys
from serving.batch.results import ERRORS_GLOB, OUTPUT_GLOB, encode_record, is_success, read_records, record_key

Key = tuple[str, "str | int"]


@dataclass
class MergeSummary:
    out: Path
    lines: int = 0
    succeeded: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    answered_twice: list[str] = field(default_factory=list)
    not_in_input: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.missing else 0

    def text(self) -> str:
        lines = [(f"merged {self.succeeded + self.failed}/{self.lines} lines into {self.out}: "
                  f"ok {self.succeeded}, failed {self.failed}, missing {len(self.missing)}")]
        for label, names in (("missing", self.missing), ("answered more than once", self.answered_twice),
                             ("in results but not in the input", self.not_in_input)):
            if names:
                lines.append(f"  {label}: {', '.join(names[:20])}" + (f" ... ({len(names)} in all)" if len(names) > 20 else ""))
        return "\n".join(lines)


def _name(key: Key) -> str:
    return str(key[1]) if key[0] == "id" else f"line {key[1]}"


def collect(results_dir: Path) -> tuple[dict[Key, dict[str, Any]], list[Key]]:
    """Key -> best record over all shard files (a success beats an error), and the keys answered more than once."""
    best: dict[Key, dict[str, Any]] = {}
    twice: list[Key] = []
    outputs, errors = sorted(results_dir.glob(OUTPUT_GLOB)), sorted(results_dir.glob(ERRORS_GLOB))
    for path in outputs + errors:
        for record in read_records(path):
            key = record_key(record)
            if key not in best:
                best[key] = record
            elif is_success(record) and is_success(best[key]):
                twice.append(key)
    return best, twice


def merge_results(input_path: Path, results_dir: Path, out: Path) -> MergeSummary:
    items = read_keys(input_path)
    best, twice = collect(results_dir)
    summary = MergeSummary(out, lines=len(items), answered_twice=[_name(k) for k in twice])
    chunks = []
    for item in items:
        record = best.pop(item.key, None)
        if record is None:
            summary.missing.append(_name(item.key))
            continue
        if is_success(record):
            summary.succeeded += 1
        else:
            summary.failed += 1
        chunks.append(encode_record(record))
    summary.not_in_input = [_name(key) for key in best]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as file:
        file.write(b"".join(chunks))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, out)
    return summary
