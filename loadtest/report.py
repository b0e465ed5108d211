"""The numbers of a run: latency percentiles, throughput, error rate and goodput, from its request records.

Percentiles interpolate linearly between closest ranks (numpy's default): p50 of [1, 2, 3, 4] is 2.5.
The run's duration is its measurement window, from the first request sent to the last one finished.
Goodput counts the requests per second that succeeded *and* met both SLOs (TTFT <= slo_ttft and
TPOT <= slo_tpot; a one-token answer has no TPOT and is judged by its TTFT alone).
ITL percentiles pool every gap of every successful request. For a trace replay, the lateness of each send
against its schedule is reported too: an open loop is only as open as the client keeps up.

`python -m loadtest.report RECORDS.jsonl --slo-ttft 2 --slo-tpot 0.2 [--out DIR]` re-derives a report.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.records import RequestRecord, read_records

QUANTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rate_series(offsets: Sequence[float], bin_s: float, end_s: float) -> tuple[list[float], list[float]]:
    """Events per second in consecutive bins of `bin_s` from 0 to `end_s`: (bin starts, rates)."""
    n = max(1, int(end_s // bin_s) + 1)
    counts = [0] * n
    for t in offsets:
        if 0 <= t < n * bin_s:
            counts[int(t // bin_s)] += 1
    return [i * bin_s for i in range(n)], [c / bin_s for c in counts]


@dataclass(frozen=True)
class Distribution:
    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        mean = sum(values) / len(values) if values else None
        return cls(len(values), mean, *(percentile(values, q) for q in QUANTILES))


@dataclass(frozen=True)
class SLO:
    ttft_s: float
    tpot_s: float

    def met(self, record: RequestRecord) -> bool:
        if not record.ok or record.ttft_s is None or record.ttft_s > self.ttft_s:
            return False
        return record.tpot_s is None or record.tpot_s <= self.tpot_s


@dataclass(frozen=True)
class Summary:
    requests: int
    succeeded: int
    failed: int
    error_rate: float
    duration_s: float
    throughput_rps: float
    output_tokens_per_s: float
    input_tokens_per_s: float
    goodput_rps: float
    slo_attainment: float  # share of all requests that met both SLOs
    slo: SLO
    ttft_s: Distribution
    tpot_s: Distribution
    itl_s: Distribution
    e2e_s: Distribution
    lateness_s: Distribution  # trace replay: send time minus scheduled time (client-side delay)
    errors: dict[str, int] = field(default_factory=dict)  # most common error messages


def measurement_window(records: Sequence[RequestRecord]) -> float:
    if not records:
        return 0.0
    return max(r.end_offset_s for r in records) - min(r.offset_s for r in records)


def summarize(records: Sequence[RequestRecord], slo: SLO, duration_s: float | None = None) -> Summary:
    ok = [r for r in records if r.ok]
    duration = measurement_window(records) if duration_s is None else duration_s
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    met = sum(1 for r in records if slo.met(r))
    errors = Counter((r.error or "unknown")[:120] for r in records if not r.ok)
    return Summary(
        requests=len(records), succeeded=len(ok), failed=len(records) - len(ok),
        error_rate=(len(records) - len(ok)) / len(records) if records else 0.0,
        duration_s=duration, throughput_rps=per_s(len(ok)),
        output_tokens_per_s=per_s(sum(r.completion_tokens or 0 for r in ok)),
        input_tokens_per_s=per_s(sum(r.prompt_tokens or 0 for r in ok)),
        goodput_rps=per_s(met), slo_attainment=met / len(records) if records else 0.0, slo=slo,
        ttft_s=Distribution.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_s=Distribution.of([r.tpot_s for r in ok if r.tpot_s is not None]),
        itl_s=Distribution.of([gap for r in ok for gap in r.itl_s]),
        e2e_s=Distribution.of([r.e2e_s for r in ok if r.e2e_s is not None]),
        lateness_s=Distribution.of([r.offset_s - r.scheduled_s for r in records if r.scheduled_s is not None]),
        errors=dict(errors.most_common(5)),
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def render_markdown(summary: Summary, info: dict[str, str] | None = None) -> str:
    s = summary
    lines = ["# Load test report", ""]
    lines += [f"- {key}: {value}" for key, value in (info or {}).items()]
    lines += [
        f"- requests: {s.requests} ({s.succeeded} ok, {s.failed} failed, error rate {s.error_rate:.1%}) "
        f"over {s.duration_s:.1f} s",
        f"- throughput: {s.throughput_rps:.3f} req/s, {s.output_tokens_per_s:.1f} output tokens/s, "
        f"{s.input_tokens_per_s:.1f} input tokens/s",
        f"- goodput: {s.goodput_rps:.3f} req/s meeting TTFT <= {s.slo.ttft_s:g} s and TPOT <= {s.slo.tpot_s:g} s "
        f"({s.slo_attainment:.1%} of requests)",
        "",
        "| metric (ms) | n | mean | p50 | p90 | p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, d in (("TTFT", s.ttft_s), ("TPOT", s.tpot_s), ("ITL", s.itl_s), ("e2e", s.e2e_s)):
        lines.append(f"| {name} | {d.count} | {_ms(d.mean)} | {_ms(d.p50)} | {_ms(d.p90)} | {_ms(d.p99)} |")
    if s.lateness_s.count:
        lines += ["", f"Replay: requests were sent {_ms(s.lateness_s.p50)} ms (p50), {_ms(s.lateness_s.p99)} ms (p99) "
                      "after their scheduled time (client-side delay: a busy client CPU or --max-inflight)."]
    if s.errors:
        lines += ["", "Errors:"] + [f"- {n} x {message}" for message, n in s.errors.items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, summary: Summary, info: dict[str, str] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps({"info": info or {}, **asdict(summary)}, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(summary, info))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path)
    parser.add_argument("--slo-ttft", type=float, default=2.0)
    parser.add_argument("--slo-tpot", type=float, default=0.2)
    parser.add_argument("--out", type=Path, help="write report.{json,md} and the plots here")
    args = parser.parse_args(argv)
    records = read_records(args.records)
    summary = summarize(records, SLO(args.slo_ttft, args.slo_tpot))
    print(render_markdown(summary), end="")
    if args.out:
        from loadtest.plots import write_plots

        write_report(args.out, summary)
        write_plots(args.out, records, summary.slo, replicas_path=args.records.parent / "replicas.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
