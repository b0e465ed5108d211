"""`pdserve bench`'s pure parts: workloads as vLLM benchmark-client arguments, trace conversion, medians, table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.bench.run import FIGURES, median_rows, table
from serving.bench.servers import command
from serving.bench.workloads import workloads

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"


def test_every_engine_has_the_issue_workloads_and_stand_in_adds_c32(tmp_path):
    stand_in = workloads("stand-in", tmp_path, None)
    builtin = workloads("builtin", tmp_path, None)
    assert {"c1", "c16", "c32", "mixed"} <= set(stand_in) and "c32" not in builtin
    c1 = dict(zip(stand_in["c1"].clients[0].argv[::2], stand_in["c1"].clients[0].argv[1::2]))
    assert c1["--max-concurrency"] == "1" and c1["--random-range-ratio"] == "0"  # fixed lengths
    assert (c1["--random-input-len"], c1["--random-output-len"]) == ("200", "64")
    assert len(stand_in["mixed"].clients) == 2  # streams and long prompts, at once


@pytest.mark.skipif(not SHARED.exists(), reason="the shared traces (../shared/traces) are not beside this checkout")
def test_trace_workloads_become_vllm_timed_traces_and_keep_mooncake_prefixes(tmp_path):
    found = workloads("stand-in", tmp_path, SHARED)
    rows = [json.loads(line) for line in (tmp_path / "mooncake.jsonl").read_text().splitlines()]
    assert {"timestamp", "input_length", "output_length", "hash_ids"} <= set(rows[0])
    assert rows[0]["hash_ids"][0] == rows[1]["hash_ids"][0]  # the trace's shared first block survives scaling
    assert all(a["timestamp"] <= b["timestamp"] for a, b in zip(rows, rows[1:]))
    azure = [json.loads(line) for line in (tmp_path / "azure.jsonl").read_text().splitlines()]
    ids = [i for row in azure for i in row["hash_ids"]]
    assert len(ids) == len(set(ids))  # no shared prefixes where the trace has none
    assert "--goodput" in found["azure"].clients[0].argv and found["prefix"].reports_hit_rate


def test_medians_skip_failed_repeats_and_keep_the_error_when_all_failed():
    rows = [{"median_ttft_ms": 10.0}, {"median_ttft_ms": 30.0}, {"error": "boom"}, {"median_ttft_ms": 20.0}]
    assert median_rows(rows) == {"median_ttft_ms": 20.0, "repeats": 3}
    assert median_rows([{"error": "boom"}]) == {"error": "boom"}


def test_table_gives_each_figure_and_its_ratio_to_bare():
    from serving.bench.workloads import Workload

    results = {"c1": {"bare": {"median_ttft_ms": 10.0, "output_throughput": 100.0},
                      "pd": {"median_ttft_ms": 30.0, "output_throughput": 90.0, "kv_transfer_ms": 5.0},
                      "rayllm": {"error": "RuntimeError: no"}}}
    text = table(results, {"c1": Workload("c1", "concurrency 1", ())})
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| server"))
    assert header.count("|") == len(FIGURES) + 4
    pd = next(line for line in lines if line.startswith("| pd"))
    assert "30.0 (3.00x)" in pd and "90.0 (0.90x)" in pd and "| 5.0 |" in pd
    assert "RuntimeError: no" in next(line for line in lines if line.startswith("| rayllm"))


def test_servers_start_as_their_users_would_start_them():
    bare = command("bare", "/m", "name", 9000, "bfloat16")
    assert bare[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--enforce-eager" in bare
    pd = command("pd", "/m", "name", 9001, "bfloat16")
    assert pd[1:4] == ["-m", "serving.cli", "up"] and pd[pd.index("--mode") + 1] == "disaggregated"
    assert command("colocated", "/m", "name", 9002, "bfloat16")[pd.index("--mode") + 1] == "colocated"
    assert command("rayllm", "/m", "name", 9003, "bfloat16")[1:3] == ["-m", "serving.bench.rayllm"]


def test_threshold_servers_fix_the_remote_prefill_threshold_and_pd_keeps_the_default():
    import yaml

    def router(kind):
        argv = command(kind, "/m", "name", 9004, "bfloat16")
        return yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()).get("router", {})

    assert router("pd-remote") == {"remote_prefill_min_tokens": 0}
    assert router("pd-local")["remote_prefill_min_tokens"] >= 10**6  # longer than any prompt
    assert router("pd") == {}
    with pytest.raises(ValueError, match="unknown server kind"):
        command("pd-typo", "/m", "name", 9005, "bfloat16")


def test_length_sweep_runs_only_when_named(tmp_path):
    found = workloads("builtin", tmp_path, None)
    sweep = [name for name in found if name.startswith("len")]
    assert sweep and not any(found[name].default for name in sweep)
    argv = found["len256"].clients[0].argv
    assert argv[argv.index("--random-input-len") + 1] == "256" and argv[argv.index("--max-concurrency") + 1] == "1"


def test_two_prefill_servers_differ_only_in_the_prefill_replica_choice():
    import yaml

    from serving.config import PDServeConfig

    def config(kind):
        argv = command(kind, "/m", "name", 9006, "bfloat16", metrics_port=9100)
        assert argv[argv.index("--metrics-port") + 1] == "9100"
        return PDServeConfig.model_validate(yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()))

    affinity, pow2 = config("pd-2p-affinity"), config("pd-2p-pow2")
    assert affinity.prefill.replicas.min == affinity.prefill.replicas.max == 2
    assert (affinity.router.prefill_replica_choice, pow2.router.prefill_replica_choice) == (
        "prefix_affinity", "power_of_two")
    # the pool keeps its placement when the variant sets its replicas
    assert affinity.prefill.resources.resources == PDServeConfig().prefill.resources.resources
    assert affinity.prefill.model_dump() == pow2.prefill.model_dump()


def test_shared_prefix_workload_is_vllms_prefix_repetition_with_whole_cpu_blocks(tmp_path):
    shared = workloads("builtin", tmp_path, None)["shared"]
    argv = shared.clients[0].argv
    assert argv[argv.index("--dataset-name") + 1] == "prefix_repetition" and shared.reports_hit_rate
    assert int(argv[argv.index("--prefix-repetition-prefix-len") + 1]) % 128 == 0  # vLLM's block on CPU


def test_the_shared_workload_parses_with_vllms_benchmark_arguments(tmp_path):
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(["--model", "m", *workloads("builtin", tmp_path, None)["shared"].clients[0].argv])
    assert (args.prefix_repetition_num_prefixes, args.max_concurrency) == (4, 4)


def test_a_server_without_pdserve_counters_is_measured_at_once(monkeypatch):
    from serving.bench import run
    from serving.bench.servers import Server
    from serving.bench.workloads import Workload

    def no_wait(_):
        raise AssertionError("waited for counters a Ray Serve LLM app never has")

    monkeypatch.setattr(run.time, "sleep", no_wait)
    monkeypatch.setattr(run, "engine_counters", lambda server: None)
    monkeypatch.setattr(run, "run_workload", lambda url, workload, tokenizer: {"median_ttft_ms": 5.0})
    row = run.measure(Server("rayllm", "http://127.0.0.1:1"), Workload("c1", "c1", ()), "tok")
    assert row["median_ttft_ms"] == 5.0


def test_the_spill_workload_outgrows_one_prefill_replica_and_fits_two(tmp_path):
    """Prefix affinity can only beat a random choice on hit rate where one replica cannot hold every system
    prompt: the `shared-spill` prompts must outgrow one two-replica server's prefill cache, and half of them fit."""
    from serving.bench.servers import PREFILL_CACHE_BLOCKS, PD_VARIANTS

    argv = workloads("builtin", tmp_path, None)["shared-spill"].clients[0].argv
    blocks_per_prefix = int(argv[argv.index("--prefix-repetition-prefix-len") + 1]) // 128
    prefix_blocks = int(argv[argv.index("--prefix-repetition-num-prefixes") + 1]) * blocks_per_prefix
    assert prefix_blocks > PREFILL_CACHE_BLOCKS >= prefix_blocks // 2 + 4 * (blocks_per_prefix + 1) // 2
    for kind in ("pd-2p-affinity", "pd-2p-pow2"):
        assert PD_VARIANTS[kind]["prefill"]["engine_args"] == {"num_gpu_blocks_override": PREFILL_CACHE_BLOCKS}
