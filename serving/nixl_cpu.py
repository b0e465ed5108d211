"""vLLM's NixlConnector, made to share a CPU with the model it serves.

Loaded by vLLM itself through `kv_transfer_config.kv_connector_module_path = "serving.nixl_cpu"`; the class is
exported under the upstream name `NixlConnector` because vLLM's config checks branch on that name
(`has_connector("NixlConnector")`), and those checks must keep applying.

Two upstream behaviours each cost a whole core on a CPU engine (measured on a 2-core machine):

1. `NixlBaseConnectorWorker.__init__` calls `os.sched_setaffinity(0, <last core of each NUMA node>)` on the
   thread that runs the model, overriding the core list vLLM's CPU worker bound from
   `VLLM_CPU_OMP_THREADS_BIND`. Prefill and decode then both run on the last core. We put back the affinity the
   thread had before.
2. The NIXL agent is created with its UCX progress thread on, and the Python binding hard-codes the thread's
   delay to 0, so it spins on a core even when no transfer is pending. The worker already drives progress on
   every engine step (`get_finished` -> `check_xfer_state`/`get_new_notifs`), and vLLM keeps stepping while a
   transfer is outstanding, so on CPU we re-create the agent without the thread (before any memory is
   registered with it, so nothing refers to the first agent yet).

Both fixes apply only when vLLM runs on the CPU platform; on GPUs the class is the upstream connector.
`tests/unit/test_nixl_cpu.py` fails if the upstream code these fixes rely on changes shape.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import TYPE_CHECKING

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlPullConnector
from vllm.platforms import current_platform

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

log = logging.getLogger(__name__)

PROGRESS_THREAD_KEY = "pdserve_progress_thread"
"""kv_connector_extra_config key: keep NIXL's busy progress thread on CPU (default False)."""


@contextlib.contextmanager
def preserved_affinity():
    """Restore the calling thread's CPU affinity when the block exits."""
    before = os.sched_getaffinity(0)
    try:
        yield before
    finally:
        after = os.sched_getaffinity(0)
        if after != before:
            log.info("pdserve: restoring model thread affinity %s (NIXL worker set %s)", sorted(before), sorted(after))
            os.sched_setaffinity(0, before)


def idle_agent(backends: list[str]):
    """A NIXL agent like vLLM's, minus the progress thread: progress happens on the caller's polls."""
    from vllm.distributed.nixl_utils import NixlWrapper, nixl_agent_config

    config = nixl_agent_config(enable_prog_thread=False, backends=backends, capture_telemetry=True)
    return NixlWrapper(str(uuid.uuid4()), config)


class CPUFriendlyNixlConnector(NixlPullConnector):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig):
        on_cpu_worker = role == KVConnectorRole.WORKER and current_platform.is_cpu()
        with preserved_affinity() if on_cpu_worker else contextlib.nullcontext():
            super().__init__(vllm_config, role, kv_cache_config)
        extra = vllm_config.kv_transfer_config.kv_connector_extra_config
        if on_cpu_worker and not extra.get(PROGRESS_THREAD_KEY, False):
            worker = self.connector_worker
            worker.nixl_wrapper = idle_agent(worker.nixl_backends)
            log.info("pdserve: NIXL agent without progress thread (progress driven by engine steps)")


# vLLM's factory looks the class up by the configured connector name.
NixlConnector = CPUFriendlyNixlConnector
