"""What `pdserve up` asks of its Ray node, and which config reloads (SIGHUP) it can apply without a restart."""

from __future__ import annotations

import pytest

from serving.app import replica_options
from serving.config import PDServeConfig
from serving.local import cluster_resources, deploy_config, reload_refusal

RUNNING = PDServeConfig.from_file("configs/cpu-exact.yaml")
NODE = cluster_resources(RUNNING)


def test_node_has_room_for_every_pool_at_its_max():
    cpus, custom = cluster_resources(RUNNING)
    assert custom == {"pdserve_prefill": 1.0, "pdserve_decode": 1.0}
    assert cpus >= RUNNING.prefill.resources.num_cpus + RUNNING.decode.resources.num_cpus + 1  # + Serve's actors


def test_engine_and_pool_changes_reload_in_place():
    changed = RUNNING.with_overrides(**{"decode.max_ongoing_requests": 4, "kv_transfer.lease_seconds": 60,
                                        "router.retry_after_s": 5})
    assert reload_refusal(RUNNING, NODE, changed) is None
    assert reload_refusal(RUNNING, NODE, RUNNING) is None


def test_what_the_running_node_fixes_is_refused_with_the_field_named():
    assert "router.port" in reload_refusal(RUNNING, NODE, RUNNING.with_overrides(**{"router.port": 9999}))
    assert "router.metrics_port" in reload_refusal(RUNNING, NODE, RUNNING.with_overrides(**{"router.metrics_port": 1}))
    more_replicas = RUNNING.with_overrides(**{"decode.replicas.max": 3})
    assert "CPUs" in reload_refusal(RUNNING, NODE, more_replicas)
    more_resource = RUNNING.with_overrides(**{"decode.resources.resources": {"pdserve_decode": 2}})
    assert "'pdserve_decode'" in reload_refusal(RUNNING, NODE, more_resource)


def test_replicas_drain_for_the_configured_time():
    config = RUNNING.with_overrides(**{"router.drain_timeout_s": 42})
    app = deploy_config(config).applications[0]
    assert app.args["router"]["drain_timeout_s"] == 42
    assert replica_options(config.decode, config.autoscaling, 42)["graceful_shutdown_timeout_s"] == 42


def test_replica_line_names_running_replicas_per_pool_and_any_in_other_states():
    from serving.local import replica_line

    assert replica_line({"prefill": {}, "decode": {"RUNNING": 1}}) == "pdserve: replicas prefill=0 decode=1"
    line = replica_line({"prefill": {"RUNNING": 1, "STARTING": 1}, "decode": {"STOPPING": 1, "RUNNING": 0}})
    assert line == "pdserve: replicas prefill=1 (STARTING 1) decode=0 (STOPPING 1)"


def test_the_ingress_mode_cannot_change_while_the_node_runs():
    # HAProxy (direct ingress) or Serve's proxy is chosen when Ray starts (serving.ray_env).
    refusal = reload_refusal(RUNNING, NODE, RUNNING.with_overrides(**{"router.direct_ingress": False}))
    assert "router.direct_ingress" in refusal


def test_haproxy_keeps_a_reloaded_out_process_as_long_as_any_request_may_last():
    """Serve's 120 s `hard-stop-after` cut a request that waited for a replica during a reload (CI, 142 s)."""
    from serving.ray_env import serve_env

    env = serve_env(PDServeConfig())
    assert env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"] == "600"  # request_timeout_s, scale_from_zero_timeout_s
    longer = PDServeConfig().with_overrides(**{"router.drain_timeout_s": 900.5})
    assert serve_env(longer)["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"] == "901"
    assert "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S" not in serve_env(
        PDServeConfig().with_overrides(**{"router.direct_ingress": False}))


def test_a_taken_port_stops_pdserve_up_at_once_naming_the_flag():
    import socket

    from serving.config import ConfigError
    from serving.local import check_ports_free

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = PDServeConfig().with_overrides(**{"router.port": port})
        with pytest.raises(ConfigError, match=rf"router.port: 127.0.0.1:{port} is not free .*pass --port"):
            check_ports_free(config)
    check_ports_free(config)  # free again
