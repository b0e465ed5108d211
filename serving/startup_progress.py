"""What `pdserve up` shows while it starts: one short line per pool and stage, instead of every replica's log.

Ray hands the driver each replica's output as batches of lines tagged with the actor's name
(`ServeReplica:pdserve:PrefillServer`). `ReplicaLogs` takes over that stream from Ray's printer: every line goes
to a log file, as Ray would have printed it, and the lines that mark an engine's start-up stages (vLLM's own log
messages) become `pdserve: prefill   loading weights  (41 s)`. `pdserve up --verbose` keeps Ray's printer.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# vLLM's messages, in the order an engine logs them while it starts.
STAGES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Initializing a V1 LLM engine"), "engine starting"),
    (re.compile(r"Starting to load model"), "loading weights"),
    (re.compile(r"Loading weights took ([\d.]+) seconds"), "weights loaded in {0} s"),
    (re.compile(r"KV cache size: ([\d,]+) tokens"), "KV cache: {0} tokens"),
    (re.compile(r"init engine .*took ([\d.]+) s"), "engine ready in {0} s, joining the service"),
)


class StartupProgress:
    """The stage each pool has reached, printed once per change with the seconds since `pdserve up` began."""

    def __init__(self, roles: dict[str, str], out: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic):
        self.roles = roles  # Ray actor name -> pool (`ServeReplica:pdserve:PrefillServer` -> `prefill`)
        self.out, self.clock, self.t0 = out, clock, clock()
        self.stage: dict[str, str] = {}
        self.lock = threading.Lock()

    def feed(self, actor_name: str | None, line: str) -> None:
        role = self.roles.get(actor_name or "")
        if role is None:
            return
        for pattern, stage in STAGES:
            match = pattern.search(line)
            if match:
                self.reached(role, stage.format(*match.groups()))
                return

    def reached(self, role: str, stage: str) -> None:
        with self.lock:
            if self.stage.get(role) == stage:
                return
            self.stage[role] = stage
        self.out(f"pdserve: {role:<9} {stage}  ({self.clock() - self.t0:.0f} s)")


class ReplicaLogs:
    """Ray's per-replica output, to a file and through `StartupProgress` (a handler of Ray's log stream)."""

    def __init__(self, path: Path, progress: StartupProgress):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.progress = path, progress
        self.file: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115  (closed by close())
        self.lock = threading.Lock()

    def __call__(self, data: dict[str, Any]) -> None:
        name = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({name} pid={data.get('pid')}) "
        with self.lock:
            if self.file.closed:  # a last batch after `pdserve up` stopped
                return
            for line in data.get("lines", ()):
                self.file.write(prefix + line + "\n")
        for line in data.get("lines", ()):
            self.progress.feed(data.get("actor_name"), line)

    def close(self) -> None:
        with self.lock:
            self.file.close()


def take_over_ray_output(logs: ReplicaLogs) -> None:
    """Swap Ray's printer of worker output (`ray.init(log_to_driver=True)` installs it) for `logs`."""
    from ray._private.worker import global_worker_stdstream_dispatcher

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.add_handler("pdserve_replica_logs", logs)
