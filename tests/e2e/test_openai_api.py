"""The official openai SDK, unchanged, against the P/D stack."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def chat_prompt_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct"]


def test_chat_non_streaming_fills_usage(client, model_name, tokenizer):
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens == chat_prompt_tokens(tokenizer, QUESTION)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_chat_streaming_matches_non_streaming(client, model_name):
    kwargs = dict(model=model_name, messages=QUESTION, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 10
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert 1 < len(content_chunks) <= 10  # tokens arrive as they are decoded, not in one piece


def test_completions_non_streaming_and_streaming(client, model_name, tokenizer):
    prompt = "The three primary colours are"
    whole = client.completions.create(model=model_name, prompt=prompt, max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.usage.prompt_tokens == len(tokenizer(prompt).input_ids)
    assert whole.usage.completion_tokens == 8
    chunks = list(client.completions.create(model=model_name, prompt=prompt, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8


def test_stop_sequence_cuts_the_output(client, model_name):
    prompt = "Count: one, two, three, four, five,"
    free = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    word = free.strip().split()[1]  # a word that would otherwise appear in the output
    stopped = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0, stop=[word])
    assert stopped.choices[0].finish_reason == "stop"
    assert word not in stopped.choices[0].text
    assert free.startswith(stopped.choices[0].text)


def test_seed_makes_sampling_repeatable(client, model_name):
    def sample(seed):
        return client.completions.create(model=model_name, prompt="Once upon a time", max_tokens=16,
                                         temperature=1.0, seed=seed, extra_body={"ignore_eos": True}).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_min_tokens_passes_through(client, model_name):
    reply = client.completions.create(model=model_name, prompt="Say yes.", max_tokens=20, temperature=0,
                                      extra_body={"min_tokens": 15})
    assert reply.usage.completion_tokens >= 15


def test_request_id_is_honoured_and_returned(pd_stack, model_name):
    response = httpx.post(f"{pd_stack.api_url}/completions", headers={"X-Request-Id": "e2e-request-42"},
                          json={"model": model_name, "prompt": "Hi", "max_tokens": 2}, timeout=120)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "e2e-request-42"
    assert "e2e-request-42" in response.json()["id"]
    generated = httpx.post(f"{pd_stack.api_url}/completions", json={"model": model_name, "prompt": "Hi",
                                                                    "max_tokens": 2}, timeout=120)
    assert generated.headers.get("x-request-id")


def test_health_reports_both_pools(pd_stack):
    response = httpx.get(f"{pd_stack.base_url}/health", timeout=30)
    assert response.status_code == 200
    assert response.json()["pools"] == {"prefill": "ok", "decode": "ok"}


def test_cli_printed_the_api_and_metrics_urls(pd_stack):
    log = pd_stack.log_path.read_text()
    assert f"http://127.0.0.1:{pd_stack.port}/v1" in log
    assert f"http://127.0.0.1:{pd_stack.metrics_port}/metrics" in log
    metrics = httpx.get(f"http://127.0.0.1:{pd_stack.metrics_port}/metrics", timeout=30)
    assert metrics.status_code == 200 and "ray_" in metrics.text


def test_pdserve_up_prints_a_line_per_stage_and_logs_the_rest_to_a_file(colocated_stack):
    """The colocated stack runs without --verbose, as a user's first `pdserve up` does."""
    import re
    from pathlib import Path

    console = colocated_stack.log_path.read_text(errors="replace").splitlines()
    ready = next(i for i, line in enumerate(console) if line.startswith("pdserve: ready"))
    assert not [line for line in console[:ready] if "ServeReplica:" in line or "pid=" in line], console[:ready]
    stages = [re.sub(r"  \(\d+ s\)$", "", line) for line in console[:ready]
              if line.startswith("pdserve: colocated ")]
    assert [re.sub(r"\d[\d.,]*", "N", s.split(maxsplit=2)[2]) for s in stages] == [
        "engine starting", "loading weights", "weights loaded in N s", "KV cache: N tokens",
        "engine ready in N s, joining the service"], stages
    assert ready < 40, console[:ready]
    path = Path(next(line for line in console if line.startswith("pdserve: logs")).split()[2])
    logged = path.read_text()
    assert "(ServeReplica:pdserve:ColocatedServer pid=" in logged and "Loading weights took" in logged


def test_chat_with_content_parts(client, model_name):
    """The SDK's list-of-parts message content (typed as an iterable in vLLM's protocol) crosses both legs."""
    reply = client.chat.completions.create(
        model=model_name, max_tokens=4,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
