"""P/D output equals colocated output token for token (float32, temperature 0, one request at a time)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e

BASE = "The history of the printing press begins with movable type in East Asia. "
PROMPTS = ["Hello", "Explain why the sky is blue in one paragraph.", BASE * 12, BASE * 60]


def complete(stack, model: str, prompt: str) -> dict:
    response = httpx.post(f"{stack.api_url}/completions", timeout=300, json={
        "model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"{len(p)}chars")
def test_pd_equals_colocated(pd_stack, colocated_stack, model_name, prompt):
    pd = complete(pd_stack, model_name, prompt)
    colocated = complete(colocated_stack, model_name, prompt)
    assert pd["usage"]["prompt_tokens"] == colocated["usage"]["prompt_tokens"]
    assert pd["choices"][0]["token_ids"] == colocated["choices"][0]["token_ids"]
    assert pd["choices"][0]["text"] == colocated["choices"][0]["text"]
