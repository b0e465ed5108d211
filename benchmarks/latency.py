"""Side-by-side TTFT / TPOT / inter-token latency of OpenAI-compatible servers, one request at a time.

    python benchmarks/latency.py --target pd=http://127.0.0.1:8000 --target colocated=http://127.0.0.1:8001

Requests alternate between the targets (A, B, A, B, ...) so that machine noise falls on both alike; the table
shows medians and each target's ratio to the first one. Nothing is asserted: this prints numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import httpx


def stream_once(base: str, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                arrivals.append(time.perf_counter())
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    ttft = arrivals[0] - start
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"ttft": ttft, "tpot": (end - start - ttft) / max(tokens - 1, 1), "itl": statistics.median(gaps),
            "e2e": end - start}


def model_of(base: str) -> str:
    return httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", required=True, help="name=base_url (repeat)")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--prompt-words", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    targets = dict(t.split("=", 1) for t in args.target)
    models = {name: model_of(url) for name, url in targets.items()}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for name, url in targets.items():  # warm-up, not measured
        stream_once(url, models[name], "warm up", 4)
    for i in range(args.requests):
        # A fresh opening each round, so no engine serves the prompt from its prefix cache.
        prompt = f"{uuid.uuid4().hex} " + "the quick brown fox jumps over the lazy dog " * (args.prompt_words // 9)
        for name, url in targets.items():
            samples[name].append(stream_once(url, models[name], prompt, args.max_tokens))
    first = next(iter(targets))
    med = {n: {k: statistics.median(s[k] for s in samples[n]) for k in ("ttft", "tpot", "itl", "e2e")}
           for n in targets}
    print(f"{args.requests} sequential streamed completions per target, ~{args.prompt_words} prompt words, "
          f"{args.max_tokens} output tokens; medians")
    print(f"{'target':<12}{'TTFT ms':>10}{'TPOT ms':>10}{'ITL ms':>10}{'e2e ms':>10}{'TTFT x':>9}{'TPOT x':>9}")
    for name in targets:
        m = med[name]
        print(f"{name:<12}{m['ttft'] * 1e3:>10.1f}{m['tpot'] * 1e3:>10.1f}{m['itl'] * 1e3:>10.1f}"
              f"{m['e2e'] * 1e3:>10.1f}{m['ttft'] / med[first]['ttft']:>9.2f}{m['tpot'] / med[first]['tpot']:>9.2f}")


if __name__ == "__main__":
    main()
