"""Locust load test of an OpenAI-compatible server (pdserve, a bare `vllm serve`, ...), streaming.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 -u 4 -t 60s \
        --shape bursty --out results/ --html results/locust.html

Locust times a streamed response only up to its headers, so each request is measured here, chunk by chunk, and
reported as its own entries: TTFT, TPOT, ITL (one per gap) and E2E, named by endpoint (failures land on E2E).
Locust's "Aggregated" row mixes them and means nothing. With --out, every request is also written to
records.jsonl, and the run ends with report.{md,json} and PNG plots. `pdserve loadtest` wraps this file.
One Locust process only (no --processes/--master): records and report are per process.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `loadtest.*` and `serving.*` come from this checkout
    sys.path.insert(0, _ROOT)

from locust import LoadTestShape, User, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from loadtest import shapes  # noqa: E402
from loadtest.options import LoadTestSettings, add_arguments  # noqa: E402
from loadtest.run import RunContext, fire_record  # noqa: E402

DEFAULT_DURATION_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 120.0


@events.init_command_line_parser.add_listener
def _add_options(parser, **_kwargs) -> None:
    add_arguments(parser)


@events.init.add_listener
def _create_run(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    if not options.stop_timeout:
        # Users a shape ramps down (the end of a burst) finish their request instead of being killed mid-stream.
        environment.stop_timeout = DEFAULT_STOP_TIMEOUT_S
    settings = LoadTestSettings.from_namespace(options)
    environment.loadtest = RunContext.create(
        settings, environment.host,
        on_record=lambda record: fire_record(environment.events.request.fire, record),
        user_count=lambda: environment.runner.user_count if environment.runner else 0,
    )
    duration = options.run_time or (None if settings.shape == "trace" else DEFAULT_DURATION_S)
    users = "" if settings.shape == "trace" else f"-u {options.num_users or 1}, "
    environment.loadtest.load_note = f"({users}-t {duration:g}s)" if duration else ""


@events.test_start.add_listener
def _begin(environment, **_kwargs) -> None:
    environment.loadtest.begin()


@events.test_stop.add_listener
def _finish(environment, **_kwargs) -> None:
    environment.loadtest.finish()


class ClosedLoopUser(User):
    """steady / step / bursty: sends a request, waits for the whole stream, thinks, sends the next."""

    def wait_time(self) -> float:
        return self.environment.loadtest.settings.think_time

    @task
    def generate(self) -> None:
        self.environment.loadtest.send_closed_loop()


class TraceReplayUser(User):
    """trace: the one user of an open-loop replay; it starts every request at its time, each in its own greenlet."""

    @task
    def replay(self) -> None:
        run = self.environment.loadtest
        if not run.replay_started:
            run.run_replay()
        raise StopUser()


class PDServeShape(LoadTestShape):
    """Picks the users and their count from --shape; -u, -r and -t keep their Locust meaning."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self._stages: list[shapes.Stage] | None = None

    def stages(self, settings: LoadTestSettings) -> list[shapes.Stage]:
        if self._stages is None:
            options = self.runner.environment.parsed_options
            duration = float(options.run_time or DEFAULT_DURATION_S)
            users = int(options.num_users or 1)
            rate = float(options.spawn_rate or users)
            if settings.shape == "step":
                self._stages = shapes.step(duration, users, settings.step_users, settings.step_time, rate)
            elif settings.shape == "bursty":
                self._stages = shapes.bursty(duration, users, settings.idle_users, settings.burst_at,
                                             settings.burst_duration)
            else:
                self._stages = shapes.steady(duration, users, rate)
        return self._stages

    def tick(self):
        environment = self.runner.environment
        run = environment.loadtest
        if run.settings.shape == "trace":
            cap = environment.parsed_options.run_time
            if run.replay_done or (cap and self.get_run_time() >= cap):
                return None
            return 1, 1, [TraceReplayUser]
        stage = shapes.stage_at(self.stages(run.settings), self.get_run_time())
        return None if stage is None else (stage.users, stage.spawn_rate, [ClosedLoopUser])
