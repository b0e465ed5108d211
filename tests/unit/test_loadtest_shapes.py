"""Load shapes as stage tables, the load test's options, and replica counts from Prometheus text."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from loadtest import shapes
from loadtest.options import OPTIONS, LoadTestSettings, add_arguments, to_argv
from loadtest.replicas import replica_counts
from loadtest.report import rate_series
from loadtest.shapes import Stage, stage_at


def test_steady():
    stages = shapes.steady(30, 2, 1.0)
    assert stage_at(stages, 0) == stage_at(stages, 29.9) == Stage(30, 2, 1.0)
    assert stage_at(stages, 30) is None


def test_step():
    assert shapes.step(60, 4, 1, 10, 2.0) == [Stage(10, 1, 2.0), Stage(20, 2, 2.0), Stage(30, 3, 2.0),
                                              Stage(60, 4, 2.0)]
    assert shapes.step(25, 10, 2, 10, 1.0) == [Stage(10, 2, 1.0), Stage(20, 4, 1.0), Stage(25, 6, 1.0)]
    with pytest.raises(ValueError):
        shapes.step(60, 4, 0, 10, 1.0)


def test_bursty_default_is_the_middle_third_and_sharp():
    stages = shapes.bursty(60, 8)
    assert stages == [Stage(20, 0, 8.0), Stage(40, 8, 8.0), Stage(60, 0, 8.0)]
    assert stage_at(stages, 19.9).users == 0 and stage_at(stages, 20).users == 8 and stage_at(stages, 45).users == 0


def test_bursty_explicit_and_invalid():
    assert shapes.bursty(30, 4, idle_users=1, burst_at_s=0, burst_duration_s=30) == [Stage(30, 4, 4.0)]
    assert shapes.bursty(30, 4, 1, 10, 5) == [Stage(10, 1, 4.0), Stage(15, 4, 4.0), Stage(30, 1, 4.0)]
    with pytest.raises(ValueError, match="within"):
        shapes.bursty(30, 4, burst_at_s=20, burst_duration_s=20)


def test_settings_defaults_match_the_options():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = LoadTestSettings.from_namespace(parser.parse_args([]))
    assert parsed == LoadTestSettings()
    assert {o.dest for o in OPTIONS} == {f.name for f in fields(LoadTestSettings)}


def test_to_argv_round_trips_non_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--shape", "trace", "--trace", "mooncake", "--length-scale", "0.05",
                              "--no-ignore-eos", "--slo-ttft", "0.5"])
    argv = to_argv(args)
    assert argv == ["--shape", "trace", "--no-ignore-eos", "--trace", "mooncake", "--length-scale", "0.05",
                    "--slo-ttft", "0.5"]
    assert parser.parse_args(argv) == args


def test_pdserve_loadtest_builds_the_locust_command(tmp_path):
    from serving.cli import parser
    from serving.loadtest_cli import LOCUSTFILE, locust_argv

    args = parser().parse_args(["loadtest", "--shape", "bursty", "--duration", "60s", "-u", "6",
                                "--out", str(tmp_path), "--metrics-url", "http://m/metrics"])
    argv = locust_argv(args)
    assert argv[1:5] == ["-m", "locust", "-f", str(LOCUSTFILE)]
    assert "--headless" in argv and argv[argv.index("-t") + 1] == "60s" and argv[argv.index("-u") + 1] == "6"
    assert argv[argv.index("--html") + 1] == str(tmp_path / "locust.html")
    assert argv[argv.index("--out") + 1] == str(tmp_path)
    assert argv[argv.index("--shape") + 1] == "bursty" and "--metrics-url" in argv


RAY_METRICS = """\
# HELP ray_serve_deployment_replica_healthy Tracks healthy replicas.
# TYPE ray_serve_deployment_replica_healthy gauge
ray_serve_deployment_replica_healthy{application="pdserve",deployment="PrefillServer",replica="a"} 1.0
ray_serve_deployment_replica_healthy{application="pdserve",deployment="DecodeServer",replica="b"} 1.0
ray_serve_deployment_replica_healthy{application="pdserve",deployment="DecodeServer",replica="c"} 1.0
ray_serve_deployment_replica_healthy{application="pdserve",deployment="DecodeServer",replica="d"} 0.0
ray_serve_deployment_replica_healthy{application="pdserve",deployment="PDRouter",replica="e"} 1.0
# HELP ray_serve_autoscaling_target_replicas The target number of replicas for this deployment.
# TYPE ray_serve_autoscaling_target_replicas gauge
ray_serve_autoscaling_target_replicas{application="pdserve",deployment="DecodeServer"} 3.0
# HELP ray_serve_num_http_requests_total Requests.
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{route="/v1"} 12.0
"""


def test_replica_counts_per_pool():
    assert replica_counts(RAY_METRICS) == {
        "prefill": {"healthy": 1.0},
        "decode": {"healthy": 2.0, "target": 3.0},
        "router": {"healthy": 1.0},
    }
    assert replica_counts("") == {}


def test_rate_series():
    xs, ys = rate_series([0.1, 0.2, 1.5, 3.9], bin_s=2.0, end_s=4.0)
    assert xs == [0.0, 2.0, 4.0] and ys == [1.5, 0.5, 0.0]
