"""`pdserve bench`: the same workloads against bare vLLM, Ray Serve LLM's P/D app and pdserve, side by side.

`servers` starts each server on this machine (and holds the ones not being measured still, so that they take no
CPU), `workloads` turns each workload into a run of vLLM's own benchmark client (`vllm bench serve`), `run`
interleaves servers and repeats and prints medians as a markdown table.
"""
