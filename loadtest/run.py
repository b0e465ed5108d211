"""What one load-test run shares: the client, prompt builders, the replay schedule, counters, output files.

Built once by the locustfile (`RunContext.create`), begun at test start and finished at test stop, when it
writes the report and plots. Locust events reach it only through the `on_record` callable it is given.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gevent
import httpx
from gevent.pool import Pool

from loadtest.client import RequestSpec, StreamClient, api_base, auth_headers, fetch_model
from loadtest.options import LoadTestSettings
from loadtest.prompts import PromptBuilder, ServerTokenizer, prompt_builders
from loadtest.records import RecordWriter, RequestRecord
from loadtest.replicas import replica_counts
from loadtest.report import SLO, percentile, render_markdown, summarize, write_report
from loadtest.traces import ScheduledRequest, TraceScaling, load_trace, schedule, select_window, time_scale_for_rate
from loadtest.traces import traces_dir

log = logging.getLogger("loadtest")
REPO_ROOT = Path(__file__).resolve().parents[1]
Fire = Callable[..., None]  # locust's events.request.fire
OnRecord = Callable[[RequestRecord], None]


def fire_record(fire: Fire, record: RequestRecord) -> None:
    """Each measurement is its own Locust entry (type TTFT/TPOT/ITL/E2E, name = endpoint), in milliseconds."""
    name = record.endpoint
    if not record.ok:
        fire(request_type="E2E", name=name, response_time=(record.e2e_s or 0) * 1000, response_length=0,
             exception=RuntimeError(record.error), context={})
        return
    if record.ttft_s is not None:
        fire(request_type="TTFT", name=name, response_time=record.ttft_s * 1000,
             response_length=record.prompt_tokens or 0, exception=None, context={})
    if record.tpot_s is not None:
        fire(request_type="TPOT", name=name, response_time=record.tpot_s * 1000,
             response_length=record.completion_tokens or 0, exception=None, context={})
    for gap in record.itl_s:
        fire(request_type="ITL", name=name, response_time=gap * 1000, response_length=0, exception=None, context={})
    fire(request_type="E2E", name=name, response_time=(record.e2e_s or 0) * 1000,
         response_length=record.completion_tokens or 0, exception=None, context={})


@dataclass
class Counters:
    sent: int = 0
    finished: int = 0
    failed: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=200))  # recent ok records, for progress

    @property
    def inflight(self) -> int:
        return self.sent - self.finished


class RunContext:
    def __init__(self, settings: LoadTestSettings, host: str, model: str, builders: dict[str, PromptBuilder],
                 on_record: OnRecord, user_count: Callable[[], int], http: httpx.Client) -> None:
        self.settings = settings
        self.host = host
        self.model = model
        self.builders = builders
        self.on_record = on_record
        self.user_count = user_count
        self.http = http
        self.out = Path(settings.out) if settings.out else None
        self.counters = Counters()
        self.records: list[RequestRecord] = []
        self.endpoints = itertools.cycle(["chat", "completions"] if settings.endpoint == "mixed"
                                         else [settings.endpoint])
        self.seq = itertools.count()
        self.replay: list[RequestSpec] = []
        self.replay_offsets: list[float] = []
        self.replay_note = ""
        self.load_note = ""  # the Locust options that set the load (-u, -t), for the report
        self.replay_started = self.replay_done = False
        self.greenlets: list[gevent.Greenlet] = []
        self.pool: Pool | None = None
        self.writer = RecordWriter(None)
        self.t0 = time.perf_counter()
        self.client = StreamClient(http, api_base(host), model, api_key=settings.api_key,
                                   ignore_eos=not settings.no_ignore_eos, run_t0=self.t0)

    @classmethod
    def create(cls, settings: LoadTestSettings, host: str | None, on_record: OnRecord,
               user_count: Callable[[], int]) -> RunContext:
        if not host:
            raise SystemExit("loadtest: pass --host, e.g. --host http://127.0.0.1:8000")
        settings = replace(settings, api_key=settings.api_key or os.environ.get("OPENAI_API_KEY"))
        http = httpx.Client(timeout=httpx.Timeout(600, connect=10),
                            limits=httpx.Limits(max_connections=max(settings.max_inflight, 64)))
        try:
            model = settings.model or fetch_model(http, api_base(host), settings.api_key)
        except (httpx.HTTPError, RuntimeError) as exc:
            raise SystemExit(f"loadtest: cannot list models at {api_base(host)}/models ({exc}); pass --model")
        server = ServerTokenizer(http, api_base(host).removesuffix("/v1"), model, auth_headers(settings.api_key))
        builders = prompt_builders(settings.tokenizer, model, server)
        ctx = cls(settings, host, model, builders, on_record, user_count, http)
        if settings.shape == "trace":
            ctx.prepare_replay()
        return ctx

    # --- what to send -------------------------------------------------------------------------------------
    def spec(self, input_tokens: int, output_tokens: int, source: str, item: ScheduledRequest | None = None,
             scheduled_s: float | None = None) -> RequestSpec:
        endpoint = next(self.endpoints)
        seed = f"{self.settings.seed}:{next(self.seq)}"
        blocks = item.prefix_blocks if item else ()
        prompt = self.builders[endpoint].build(input_tokens, seed, blocks, item.block_tokens if item else 0)
        return RequestSpec(endpoint, prompt.text, output_tokens, source, prompt.tokens, prompt.exact, scheduled_s)

    def prepare_replay(self) -> None:
        s = self.settings
        trace = load_trace(s.trace, traces_dir(REPO_ROOT))
        time_scale = s.time_scale
        if s.trace_rate:
            time_scale = time_scale_for_rate(select_window(trace, s.trace_start, s.trace_window, s.max_requests),
                                             s.trace_rate, s.trace_window)
        scaling = TraceScaling(time_scale, s.length_scale, s.trace_start, s.trace_window, s.max_requests,
                               s.max_input_tokens, s.max_output_tokens)
        items = schedule(trace, scaling)
        self.replay = [self.spec(i.input_tokens, i.output_tokens, f"trace:{trace.name}", i, i.at_s) for i in items]
        self.replay_offsets = [i.at_s for i in items]
        self.replay_note = scaling.describe(trace, items)
        log.info("loadtest: %s", self.replay_note)

    # --- running ------------------------------------------------------------------------------------------
    def begin(self) -> None:
        self.t0 = self.client.run_t0 = time.perf_counter()
        self.counters, self.records, self.greenlets = Counters(), [], []
        if self.out:
            self.writer = RecordWriter(self.out / "records.jsonl")
            if self.settings.metrics_url:
                self.greenlets.append(gevent.spawn(self._sample_replicas, self.out / "replicas.jsonl"))
        if self.settings.progress_interval > 0:
            self.greenlets.append(gevent.spawn(self._progress))

    def send(self, spec: RequestSpec, users: int | None = None) -> RequestRecord:
        self.counters.sent += 1
        record = self.client.send(spec, users=users)
        self.counters.finished += 1
        self.records.append(record)
        if record.ok:
            self.counters.recent.append(record)
        else:
            self.counters.failed += 1
        self.writer.write(record)
        self.on_record(record)
        return record

    def send_closed_loop(self) -> RequestRecord:
        spec = self.spec(self.settings.prompt_tokens, self.settings.output_tokens, self.settings.shape)
        return self.send(spec, users=self.user_count())

    def run_replay(self) -> None:
        """Open loop: each request starts at its scheduled time, whether or not earlier ones have finished."""
        self.pool = Pool(self.settings.max_inflight)
        self.replay_started = True  # replayed once: a task that fails midway does not start over
        start = time.perf_counter()
        base = start - self.t0
        try:
            for spec, at in zip(self.replay, self.replay_offsets):
                delay = start + at - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)
                # spawn() waits while max_inflight requests are out: the lateness shows in the records
                self.pool.spawn(self.send, replace(spec, scheduled_s=base + at))
            self.pool.join()
        finally:
            self.replay_done = True

    def finish(self) -> None:
        gevent.killall(self.greenlets, block=True, timeout=5)
        if self.pool is not None:
            self.pool.kill(block=False)
        self.writer.close()
        summary = summarize(self.records, SLO(self.settings.slo_ttft, self.settings.slo_tpot))
        info = self.info()
        print("\n" + render_markdown(summary, info), flush=True)
        if self.out:
            from loadtest.plots import write_plots  # matplotlib only where plots are asked for

            write_report(self.out, summary, info)
            write_plots(self.out, self.records, summary.slo, self.out / "replicas.jsonl")
            print(f"loadtest: records, report and plots in {self.out}/", flush=True)

    def info(self) -> dict[str, str]:
        s = self.settings
        prompt_count = "exact (model tokenizer)" if self.builders["chat"].exact else "estimate (1 token per word)"
        info = {"target": f"{api_base(self.host)} model {self.model!r}", "shape": f"{s.shape} {self.load_note}".strip(),
                "endpoint": s.endpoint,
                "prompt lengths": prompt_count,
                "output lengths": "fixed (ignore_eos, min_tokens)" if not s.no_ignore_eos else "up to max_tokens"}
        if s.shape == "trace":
            info["trace"] = self.replay_note
        else:
            info["request size"] = f"{s.prompt_tokens} prompt tokens, {s.output_tokens} output tokens"
        return info

    # --- background ---------------------------------------------------------------------------------------
    def progress_line(self) -> str:
        c = self.counters
        ttft = percentile([r.ttft_s for r in c.recent if r.ttft_s is not None], 50)
        tpot = percentile([r.tpot_s for r in c.recent if r.tpot_s is not None], 50)
        fmt = (lambda v: "-" if v is None else f"{v * 1000:.0f}ms")
        due = f" due={len(self.replay)}" if self.replay else ""
        return (f"[loadtest] {time.perf_counter() - self.t0:6.1f}s users={self.user_count()} sent={c.sent}{due} "
                f"done={c.finished} failed={c.failed} inflight={c.inflight} ttft_p50={fmt(ttft)} "
                f"tpot_p50={fmt(tpot)}")

    def _progress(self) -> None:
        while True:
            gevent.sleep(self.settings.progress_interval)
            print(self.progress_line(), flush=True)

    def _sample_replicas(self, path: Path) -> None:
        warned = False
        with open(path, "w", encoding="utf-8") as samples:
            while True:
                try:
                    text = self.http.get(self.settings.metrics_url, timeout=10).text
                    pools: dict[str, Any] = replica_counts(text)
                except Exception as exc:  # a scrape that fails must not stop the load test
                    if not warned:
                        log.warning("loadtest: cannot sample %s: %s", self.settings.metrics_url, exc)
                        warned = True
                else:
                    samples.write(json.dumps({"offset_s": time.perf_counter() - self.t0, "pools": pools}) + "\n")
                    samples.flush()
                gevent.sleep(self.settings.metrics_interval)
