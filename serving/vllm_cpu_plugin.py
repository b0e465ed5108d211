"""A vLLM general plugin (entry point `vllm.general_plugins`): shorter busy-waiting for CPU engines we start.

vLLM's multiprocess executor passes every engine step between the scheduler process and the model worker
through a shared-memory queue whose readers spin (`sched_yield`) for a whole second after their last read
before they sleep on a socket (`shm_broadcast.SpinCondition`, `busy_loop_s=1`). On a GPU host that second costs
an idle CPU core; on a CPU host it is the core another engine or the HTTP side needs: after each prefill the
prefill engine's two processes spin for a second on the cores the decode engine's scheduler and the ingress
share, which showed as 25 % longer inter-token latency on the stand-in model (2 cores, measured).

vLLM loads general plugins in every process it starts, and loads every installed one, so this plugin acts only
where pdserve asked for it: replicas set `PDSERVE_ENGINE_SPIN_S` (`serving.kv.replica_env`) and their engine
processes inherit it. Spinning stays on for that long after a read (several engine steps), so a busy engine
never sleeps between steps; an idle one stops burning its core within milliseconds.
`tests/unit/test_vllm_cpu_plugin.py` fails if the upstream code this relies on changes shape.
"""

from __future__ import annotations

import os

SPIN_ENV = "PDSERVE_ENGINE_SPIN_S"


def register() -> None:
    value = os.environ.get(SPIN_ENV)
    if not value:
        return
    from vllm.distributed.device_communicators import shm_broadcast

    cap_spin(shm_broadcast.SpinCondition, float(value))


def cap_spin(spin_condition: type, seconds: float) -> None:
    """Readers created before or after this call busy-wait at most `seconds` after their last read."""
    if getattr(spin_condition, "_pdserve_spin_cap", None) is not None:
        spin_condition._pdserve_spin_cap = seconds
        return
    upstream_wait = spin_condition.wait

    def wait(self, timeout_ms=None):
        if self.busy_loop_s > spin_condition._pdserve_spin_cap:
            self.busy_loop_s = spin_condition._pdserve_spin_cap
        return upstream_wait(self, timeout_ms)

    spin_condition._pdserve_spin_cap = seconds
    spin_condition.wait = wait
