"""`pdserve up`'s start-up display, from real vLLM log lines of a P/D start on this machine."""

from __future__ import annotations

from serving.startup_progress import ReplicaLogs, StartupProgress

PREFILL, DECODE = "ServeReplica:pdserve:PrefillServer", "ServeReplica:pdserve:DecodeServer"
ROLES = {PREFILL: "prefill", DECODE: "decode"}
# As Ray hands them to the driver (one line each; vLLM's own messages, trimmed after the part that matters).
PREFILL_START = [
    "Triton is installed, but doesn't include CPU backend. Disabling Triton.",
    "(EngineCore pid=27948) INFO 12-03 18:49:51 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
    "model='/root/.cache/pdserve/models/smollm2-135m-instruct'",
    "(Worker pid=28016) INFO 12-03 18:50:11 [cpu_model_runner.py:68] Starting to load model /root/.cache/x...",
    "(Worker pid=28016) INFO 12-03 18:50:12 [base_loader.py:82] Initializing model took 0.725759 seconds",
    "(Worker pid=28016) INFO 12-03 18:50:17 [default_loader.py:501] Loading weights took 5.75 seconds",
    "(EngineCore pid=27948) INFO 12-03 18:50:22 [utils.py:347] Using LBHNC KV cache layout.",
    "(EngineCore pid=27948) INFO 12-03 18:50:22 [kv_cache_utils.py:2327] CPU KV cache size: 23,296 tokens, "
    "Maximum concurrency for 2,048 tokens per request: 11.38x",
    "(EngineCore pid=27948) INFO 12-03 18:50:27 [core.py:402] init engine (profile, create kv cache, warmup model) "
    "took 6.60 s",
]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_each_stage_is_one_line_per_pool_with_the_seconds_since_start():
    printed, clock = [], Clock()
    progress = StartupProgress(ROLES, out=printed.append, clock=clock)
    for i, line in enumerate(PREFILL_START):
        clock.now = 100.0 + 10 * i
        progress.feed(PREFILL, line)
        progress.feed(PREFILL, line)  # a repeated line prints nothing more
    assert printed == [
        "pdserve: prefill   engine starting  (10 s)",
        "pdserve: prefill   loading weights  (20 s)",
        "pdserve: prefill   weights loaded in 5.75 s  (40 s)",
        "pdserve: prefill   KV cache: 23,296 tokens  (60 s)",
        "pdserve: prefill   engine ready in 6.60 s, joining the service  (70 s)",
    ]


def test_lines_of_other_actors_and_other_messages_show_nothing():
    printed = []
    progress = StartupProgress(ROLES, out=printed.append, clock=Clock())
    progress.feed("ServeController", PREFILL_START[1])
    progress.feed(None, PREFILL_START[1])
    progress.feed(DECODE, "INFO [nixl_utils.py:72] NIXL is available")
    assert printed == []
    progress.feed(DECODE, PREFILL_START[2])
    assert printed == ["pdserve: decode    loading weights  (0 s)"]


def test_every_line_goes_to_the_file_tagged_with_its_replica(tmp_path):
    printed = []
    logs = ReplicaLogs(tmp_path / "logs" / "up.log", StartupProgress(ROLES, out=printed.append, clock=Clock()))
    logs({"actor_name": PREFILL, "pid": 27603, "lines": PREFILL_START[:3], "is_err": True})
    logs({"actor_name": None, "task_name": None, "pid": "raylet", "lines": ["raylet says"], "is_err": False})
    logs.close()
    logs({"actor_name": PREFILL, "pid": 27603, "lines": ["after the end"], "is_err": True})  # dropped, no error
    text = (tmp_path / "logs" / "up.log").read_text().splitlines()
    assert text[0] == f"({PREFILL} pid=27603) {PREFILL_START[0]}" and len(text) == 4
    assert text[3] == "( pid=raylet) raylet says"
    assert printed == ["pdserve: prefill   engine starting  (0 s)", "pdserve: prefill   loading weights  (0 s)"]
