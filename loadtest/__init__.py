"""Locust load tests for pdserve (or any OpenAI-compatible server).

`locustfile.py` is the only module that imports Locust; everything else is pure logic (SSE parsing, timing,
traces, prompts, shapes, report, plots) and is importable and unit-tested on its own.
"""
