"""API keys (like `vllm serve --api-key`): the autoscale stack is started with PDSERVE_API_KEYS set.

Named to run after test_autoscaling.py, whose metric checks want a stack no other test has used yet."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.stack import API_KEY

pytestmark = pytest.mark.e2e

BODY = {"model": "SmolLM2-135M-Instruct", "prompt": "Hi", "max_tokens": 2}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                                     {"Authorization": f"Basic {API_KEY}"}], ids=["missing", "wrong", "no-scheme",
                                                                                  "basic"])
def test_missing_or_wrong_key_is_a_401(autoscale_stack, headers):
    for method, path, body in (("POST", "completions", BODY), ("GET", "models", None)):
        response = httpx.request(method, f"{autoscale_stack.api_url}/{path}", json=body, headers=headers, timeout=60)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "AuthenticationError" and "API key" in error["message"]


def test_right_key_is_served_and_health_stays_open(autoscale_stack):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=autoscale_stack.api_url, api_key=API_KEY, max_retries=0, timeout=600)
    assert client.completions.create(**BODY).choices[0].text is not None
    assert httpx.get(f"{autoscale_stack.base_url}/health", timeout=60).status_code == 200
    wrong = openai.OpenAI(base_url=autoscale_stack.api_url, api_key="nope", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(**BODY)
