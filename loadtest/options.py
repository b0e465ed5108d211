"""The load test's own command-line options: one definition, registered in Locust's parser (the locustfile) and
in `pdserve loadtest`, which turns its parsed values back into Locust arguments with `to_argv`.

Locust's own options keep their meaning: `--host`, `-u/--users` (the users of `steady`, the most users of
`step`, the spike of `bursty`), `-r/--spawn-rate`, `-t/--run-time` (the shape's duration; a cap for `trace`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any, Literal

Shape = Literal["steady", "step", "bursty", "trace"]
Endpoint = Literal["chat", "completions", "mixed"]
SHAPES: tuple[str, ...] = ("steady", "step", "bursty", "trace")


@dataclass(frozen=True)
class Option:
    flag: str
    kwargs: dict[str, Any]

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flag.lstrip("-").replace("-", "_")


def _opt(flag: str, **kwargs: Any) -> Option:
    return Option(flag, kwargs)


OPTIONS: tuple[Option, ...] = (
    _opt("--shape", choices=SHAPES, default="steady",
         help="steady: -u users for -t; step: +--step-users every --step-time up to -u; bursty: --idle-users, "
              "a spike of -u users, --idle-users again; trace: open-loop replay of --trace"),
    _opt("--endpoint", choices=("chat", "completions", "mixed"), default="chat",
         help="/v1/chat/completions, /v1/completions, or alternate between them"),
    _opt("--model", default=None, help="model name (default: the first of GET /v1/models)"),
    _opt("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY, else none)"),
    _opt("--tokenizer", default="auto",
         help="how prompts of exact token lengths are counted: 'auto' = the server's /tokenize (vLLM, pdserve), "
              "else the model id's tokenizer; an HF folder or hub id; 'none' = estimate (1 token per word)"),
    _opt("--prompt-tokens", type=int, default=128, help="prompt length of steady/step/bursty requests"),
    _opt("--output-tokens", type=int, default=32, help="output length of steady/step/bursty requests"),
    _opt("--no-ignore-eos", action="store_true", default=False,
         help="do not send vLLM's ignore_eos/min_tokens (servers without them; output lengths then vary)"),
    _opt("--think-time", type=float, default=0.0, help="seconds a closed-loop user waits between requests"),
    _opt("--step-users", type=int, default=1, help="step: users added per step"),
    _opt("--step-time", type=float, default=10.0, help="step: seconds per step"),
    _opt("--idle-users", type=int, default=0, help="bursty: users before and after the spike"),
    _opt("--burst-at", type=float, default=None, help="bursty: spike start in seconds (default: a third in)"),
    _opt("--burst-duration", type=float, default=None, help="bursty: spike length in seconds (default: a third)"),
    _opt("--trace", default="azure",
         help="trace: 'azure' or 'mooncake' (from ../shared/traces/) or a path to a .csv/.jsonl of that format"),
    _opt("--time-scale", type=float, default=1.0,
         help="trace: multiply arrival times by this (2 = half the rate, 0.5 = twice the rate)"),
    _opt("--trace-rate", type=float, default=None,
         help="trace: pick the time scale that gives this mean request rate (req/s); overrides --time-scale"),
    _opt("--length-scale", type=float, default=0.1, help="trace: multiply input and output token counts by this"),
    _opt("--trace-start", type=float, default=0.0, help="trace: skip this many seconds of the trace (unscaled)"),
    _opt("--trace-window", type=float, default=None, help="trace: replay this many seconds of the trace (unscaled)"),
    _opt("--max-requests", type=int, default=None, help="trace: replay at most this many requests"),
    _opt("--max-input-tokens", type=int, default=1024, help="trace: clamp scaled prompt lengths to this"),
    _opt("--max-output-tokens", type=int, default=256, help="trace: clamp scaled output lengths to this"),
    _opt("--max-inflight", type=int, default=256,
         help="trace: most requests in flight; beyond it arrivals wait (recorded as lateness)"),
    _opt("--out", default=None, help="folder for records.jsonl, report.{json,md}, PNG plots (none: no files)"),
    _opt("--slo-ttft", type=float, default=2.0, help="goodput SLO: time to first token, seconds"),
    _opt("--slo-tpot", type=float, default=0.2, help="goodput SLO: time per output token, seconds"),
    _opt("--metrics-url", default=None,
         help="Prometheus endpoint (pdserve up prints it) sampled for replica counts per pool"),
    _opt("--metrics-interval", type=float, default=2.0, help="seconds between --metrics-url samples"),
    _opt("--progress-interval", type=float, default=5.0, help="seconds between progress lines (0: none)"),
    _opt("--seed", type=int, default=0, help="seed of the prompt text"),
)


def add_arguments(parser: Any) -> None:
    """Register OPTIONS on an argparse-compatible parser (Locust's configargparse parser or argparse)."""
    group = parser.add_argument_group("pdserve load test") if hasattr(parser, "add_argument_group") else parser
    for option in OPTIONS:
        group.add_argument(option.flag, **option.kwargs)


def to_argv(namespace: argparse.Namespace) -> list[str]:
    """OPTIONS whose parsed values differ from their defaults, as command-line arguments."""
    argv: list[str] = []
    for option in OPTIONS:
        value = getattr(namespace, option.dest, None)
        if value is None or value == option.kwargs.get("default"):
            continue
        if option.kwargs.get("action") == "store_true":
            argv.append(option.flag)
        else:
            argv += [option.flag, str(value)]
    return argv


@dataclass(frozen=True)
class LoadTestSettings:
    """Typed view of the parsed options the load test relies on."""

    shape: str = "steady"
    endpoint: str = "chat"
    model: str | None = None
    api_key: str | None = None
    tokenizer: str = "auto"
    prompt_tokens: int = 128
    output_tokens: int = 32
    no_ignore_eos: bool = False
    think_time: float = 0.0
    step_users: int = 1
    step_time: float = 10.0
    idle_users: int = 0
    burst_at: float | None = None
    burst_duration: float | None = None
    trace: str = "azure"
    time_scale: float = 1.0
    trace_rate: float | None = None
    length_scale: float = 0.1
    trace_start: float = 0.0
    trace_window: float | None = None
    max_requests: int | None = None
    max_input_tokens: int = 1024
    max_output_tokens: int = 256
    max_inflight: int = 256
    out: str | None = None
    slo_ttft: float = 2.0
    slo_tpot: float = 0.2
    metrics_url: str | None = None
    metrics_interval: float = 2.0
    progress_interval: float = 5.0
    seed: int = 0

    @classmethod
    def from_namespace(cls, namespace: Any) -> LoadTestSettings:
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)})
