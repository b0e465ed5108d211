"""The environment of every Ray process of a pdserve cluster.

`pdserve up` sets it before Ray starts; the RayService puts it in each container. Serve reads these settings when
its modules are imported, so this module imports no Ray.
"""

from __future__ import annotations

import math

from serving.config import PDServeConfig


def serve_env(config: PDServeConfig) -> dict[str, str]:
    """Environment of every Ray process of the cluster (`pdserve up` sets it before Ray starts; the RayService
    puts it in each container). Each setting removes work from the path of every streamed token."""
    env = {
        # The raylet starts workers at nice 15, below the engines: the ingress replica and Serve's controller would
        # get the CPU only when no engine wants it.
        "RAY_worker_niceness": "0",
        # Serve runs user code on a second thread with its own event loop by default: every response message then
        # crosses threads (and is batched on the way), and so does every handle call.
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        # Handle calls (the prefill leg) over gRPC between replicas instead of Ray actor tasks.
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    }
    if config.router.direct_ingress:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        # Serve reloads HAProxy whenever replicas change; the old HAProxy process keeps the connections it holds
        # and closes them at `hard-stop-after` (Serve: 120 s). A request waiting for a replica that takes longer
        # to start (a reload on a loaded host: 142 s measured), or a long stream, was cut there: let the old
        # process live as long as any of our requests may.
        router = config.router
        longest = max(router.request_timeout_s, router.drain_timeout_s, router.scale_from_zero_timeout_s)
        env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"] = str(math.ceil(longest))
    return env
