"""`pdserve up`: a private Ray node on this machine, the Serve application deployed on it, until a signal.

The application is deployed from the same Serve config a RayService would carry (`serve_application`):
import path + args + application-level autoscaling policy, so the local run exercises the cluster path.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

from serving.config import ConfigError, PDServeConfig


def interrupt(proc, timeout_s: float = 180) -> int:
    """Stop a `pdserve up` (or any server) process as Ctrl-C would; kill its whole session group if it hangs.
    Returns its exit code (-9 when it had to be killed)."""
    import os
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return -9
    return proc.returncode


def cluster_resources(config: PDServeConfig) -> tuple[int, dict[str, float]]:
    """Logical CPUs and custom resources a local Ray node needs so every pool can reach its max replicas."""
    cpus = 1  # Serve's controller and proxies
    custom: Counter[str] = Counter()
    for role in config.active_roles():
        pool = config.pool(role)
        cpus += pool.resources.num_cpus * pool.replicas.max
        for name, amount in pool.resources.resources.items():
            custom[name] += amount * pool.replicas.max
    return math.ceil(cpus), dict(custom)


def deploy_config(config: PDServeConfig):
    from ray.serve.schema import ServeDeploySchema

    from serving.app import serve_application

    return ServeDeploySchema.model_validate({
        "http_options": {"host": config.router.host, "port": config.router.port},
        "applications": [serve_application(config)],
    })


class Signals:
    """What SIGINT/SIGTERM (stop) and SIGHUP (reload) asked for. The handler only assigns attributes: a handler
    that takes a lock (`threading.Event.set`) deadlocks when a second signal arrives while the first one holds it
    (a double Ctrl-C)."""

    def __init__(self):
        self.stop = False
        self.reload = False

    def on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True

    def is_set(self) -> bool:
        """`cancel` for the waits below."""
        return self.stop


def wait_running(app_name: str, timeout_s: float = 1800, cancel: Signals | None = None) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (cancel and cancel.is_set()):
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == "RUNNING":
            return
        if app is not None and app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"pdserve: application {app.status}: {app.message}")
        time.sleep(1)
    if cancel and cancel.is_set():
        return
    raise TimeoutError(f"pdserve: application not running after {timeout_s:.0f}s")


def wait_healthy(base_url: str, timeout_s: float = 1800, cancel: Signals | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (cancel and cancel.is_set()):
        try:
            response = httpx.get(f"{base_url}/health", timeout=30)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    if cancel and cancel.is_set():
        return
    raise TimeoutError(f"pdserve: {base_url}/health not OK after {timeout_s:.0f}s")


REPLICA_REPORT_INTERVAL_S = 2.0


def replica_line(states: dict[str, dict[str, int]]) -> str:
    """`pdserve: replicas prefill=1 decode=0 (STARTING 1)`: running replicas per pool, then any others by state."""
    parts = []
    for role, by_state in states.items():
        others = ", ".join(f"{state} {n}" for state, n in sorted(by_state.items()) if state != "RUNNING" and n)
        parts.append(f"{role}={by_state.get('RUNNING', 0)}" + (f" ({others})" if others else ""))
    return "pdserve: replicas " + " ".join(parts)


def report_replicas(app_name: str, stop: Signals) -> None:
    """Print a line whenever a pool's replicas change (scaling, replacement), so that `pdserve up`'s output shows
    what the autoscaler does. Asks Serve's controller from this process, never from the request path."""
    from ray import serve

    from serving.app import DEPLOYMENT_NAMES

    last = None
    while not stop.is_set():
        time.sleep(REPLICA_REPORT_INTERVAL_S)
        try:
            app = serve.status().applications.get(app_name)
        except Exception:  # the controller is busy or restarting: try again next time
            continue
        if app is None:
            continue
        states = {role: dict(app.deployments[name].replica_states) for role, name in DEPLOYMENT_NAMES.items()
                  if name in app.deployments}
        line = replica_line(states)
        if line != last:
            print(line, flush=True)
            last = line


def reload_refusal(running: PDServeConfig, node: tuple[int, dict[str, float]], new: PDServeConfig) -> str | None:
    """Why `new` cannot replace `running` on this Ray node without a restart, or None when it can."""
    for field in ("host", "port", "metrics_port", "direct_ingress"):
        if getattr(new.router, field) != getattr(running.router, field):
            return f"router.{field} is fixed while the node runs (restart pdserve up to change it)"
    if new.local != running.local:
        return "local is fixed while the node runs (restart pdserve up to change it)"
    cpus, custom = cluster_resources(new)
    if cpus > node[0]:
        return f"the new pools need {cpus} CPUs at their max replicas; this node was started with {node[0]}"
    for name, amount in custom.items():
        if amount > node[1].get(name, 0):
            return f"the new pools need {amount:g} of resource {name!r}; this node has {node[1].get(name, 0):g}"
    return None


def reload_app(client, running: PDServeConfig, node: tuple[int, dict[str, float]], new: PDServeConfig,
               cancel: Signals) -> PDServeConfig:
    """Redeploy with `new` (what a RayService does on a serveConfigV2 change); returns the config now serving.

    Serve replaces the replicas whose options or arguments changed, a few at a time; each one it stops first
    finishes its in-flight requests (`router.drain_timeout_s`), and requests that arrive meanwhile wait for a
    replica instead of failing.
    """
    from serving.app import APP_NAME

    if (refusal := reload_refusal(running, node, new)) is not None:
        print(f"pdserve: reload refused, still serving the previous config: {refusal}", flush=True)
        return running
    print("pdserve: reloading: changed replicas are replaced after they drain their requests", flush=True)
    client.deploy_apps(deploy_config(new), _blocking=False)
    wait_running(APP_NAME, cancel=cancel)
    if not cancel.is_set():
        print("pdserve: reloaded", flush=True)
    return new


def local_env(config: PDServeConfig) -> dict[str, str]:
    """`serve_env` plus ports of this machine's own: HAProxy's stats and metrics listeners and Serve's fallback
    proxy are fixed ports by default, and two stacks on one machine (the tests run two) would collide."""
    from serving.ray_env import serve_env
    from serving.kv import free_port

    env = serve_env(config)
    if config.router.direct_ingress:
        # A stopping ingress replica stays up this long so load balancers can take it out (30 s by default, for
        # cloud load balancers); this machine's HAProxy re-checks a server every 250 ms once it changes state.
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "2"
        for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                     "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"):
            env[name] = str(free_port())
    return env


def check_ports_free(config: PDServeConfig) -> None:
    """The API and metrics ports, bound for a moment now: taken, they would fail deep inside HAProxy or Ray's
    metrics agent after the model has loaded, with nothing that says which port or what to pass."""
    import socket

    for field, flag, host, port in (("router.port", "--port", config.router.host, config.router.port),
                                    ("router.metrics_port", "--metrics-port", "0.0.0.0", config.router.metrics_port)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise ConfigError(f"{field}: {host}:{port} is not free ({exc.strerror}); another server runs "
                                  f"there: stop it, or pass {flag} with a free port") from exc


def run_local(config: PDServeConfig, load: Callable[[], PDServeConfig] | None = None, verbose: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; on SIGHUP, `load()` the config again and redeploy it (see `reload_app`).
    Replicas' output goes to a log file, with a line per pool and start-up stage here; `verbose` prints it all."""
    import os

    # Read by Ray's processes when they start, and by Serve's modules when they are imported: set it first.
    os.environ.update(local_env(config))
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve deploy`/`serve run config.yaml` use

    from serving.app import APP_NAME, DEPLOYMENT_NAMES
    from serving.engine_args import check_engine_args
    from serving.model import cache_dir, resolve_model
    from serving.startup_progress import ReplicaLogs, StartupProgress, take_over_ray_output

    # Convert the built-in model once, with progress, before Ray starts; then fail now on what the replicas
    # would only find minutes later.
    check_ports_free(config)
    check_engine_args(config, resolve_model(config.model.source))
    # Every Ray process inherits this; each engine then binds its model threads to its own pool's cores.
    cores = config.stack_cores(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores)
    num_cpus, resources = cluster_resources(config)
    ray.init(
        address="local",  # always a private node: `pdserve up` must not attach to whatever else runs here
        num_cpus=num_cpus,
        resources=resources,
        include_dashboard=False,
        _metrics_export_port=config.router.metrics_port,
        logging_level="WARNING",
    )
    logs = None
    if not verbose:
        roles = {f"ServeReplica:{APP_NAME}:{DEPLOYMENT_NAMES[role]}": role for role in config.active_roles()}
        path = cache_dir() / "logs" / f"up-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        logs = ReplicaLogs(path, StartupProgress(roles, out=lambda line: print(line, flush=True)))
        take_over_ray_output(logs)
        print(f"pdserve: logs     {path}  (pdserve up --verbose prints them here)", flush=True)
    signals = Signals()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signals.on_signal)
    try:
        schema = deploy_config(config)
        client = serve_api.serve_start(http_options=schema.http_options.model_dump())
        print(f"pdserve: starting {config.mode} serving of {config.model.served_name} ...", flush=True)
        client.deploy_apps(schema, _blocking=False)
        wait_running(APP_NAME, cancel=signals)
        base = f"http://{config.router.host}:{config.router.port}"
        wait_healthy(base, cancel=signals)
        if signals.stop:
            return 0
        print(f"pdserve: API      {base}/v1  (model {config.model.served_name!r}, mode {config.mode})", flush=True)
        print(f"pdserve: health   {base}/health", flush=True)
        print(f"pdserve: metrics http://127.0.0.1:{config.router.metrics_port}/metrics", flush=True)
        models = ", ".join(f"{role} {config.pool(role).cpu.threads_bind}" for role in config.active_roles())
        print(f"pdserve: cores    model threads: {models}; Ray and HTTP: {','.join(map(str, sorted(cores)))}",
              flush=True)
        print("pdserve: ready; Ctrl-C stops" + ("; SIGHUP reloads the config" if load else ""), flush=True)
        threading.Thread(target=report_replicas, args=(APP_NAME, signals), daemon=True).start()
        while not signals.stop:
            time.sleep(0.2)
            if signals.reload and not signals.stop:
                signals.reload = False
                try:
                    new = load() if load else config
                except Exception as exc:  # a config with a mistake in it must not take the server down
                    print(f"pdserve: reload refused, still serving the previous config: {exc}", flush=True)
                    continue
                config = reload_app(client, config, (num_cpus, resources), new, signals)
    except BaseException:
        if logs is not None:
            print(f"pdserve: the replicas' output is in {logs.path}", flush=True)
        raise
    finally:
        print("pdserve: shutting down ...", flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if logs is not None:
                logs.close()
        print("pdserve: stopped", flush=True)
    return 0
