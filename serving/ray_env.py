"""The environment of every Ray process of a pdserve cluster.

`pdserve up` sets it before Ray starts; the RayService puts it in each container. Serve reads these settings when
its modules are imported, so this module imports no Ray.
"""

from __future__ import annotations

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
    return env
