"""The generating routes parse each body with vLLM's model of its endpoint and answer a 400 when it fails: vLLM's,
or pdserve's own where vLLM's model lets a body through or crashes on it (serving.body_checks)."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("vllm")

from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler  # noqa: E402

from serving.api import add_generating_routes  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


class EchoIngress:
    async def serve(self, endpoint, request, raw_request):
        return JSONResponse({"endpoint": endpoint, "model": type(request).__name__})


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    init_exception_handler(app)
    app.state.args = argparse.Namespace(log_error_stack=False)
    add_generating_routes(app, EchoIngress())
    return TestClient(app)


@pytest.mark.parametrize("path,body,endpoint,model", [
    ("/v1/chat/completions", {"model": "m", "messages": HI}, "chat", "ChatCompletionRequest"),
    ("/v1/completions", {"model": "m", "prompt": "x"}, "completions", "CompletionRequest"),
    ("/v1/responses", {"model": "m", "input": "x"}, "responses", "ResponsesRequest"),
    ("/v1/messages", {"model": "m", "max_tokens": 3, "messages": HI}, "messages", "AnthropicMessagesRequest")])
def test_each_route_hands_the_ingress_its_endpoint_and_vllm_model(client, path, body, endpoint, model):
    assert client.post(path, json=body).json() == {"endpoint": endpoint, "model": model}


@pytest.mark.parametrize("path,body,param", [("/v1/responses", {"model": "m", "input": 5}, "body.input"),
                                             ("/v1/chat/completions", {"model": "m"}, "body.messages")])
def test_a_body_vllm_rejects_never_reaches_the_ingress(client, path, body, param):
    response = client.post(path, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function"}]}]}, "messages[0].tool_calls[0].function"),
    # vLLM's own validator calls .get on it: a 500 under `vllm serve`
    ("/v1/chat/completions", {"model": "m", "messages": HI, "structured_outputs": "x"}, "structured_outputs"),
    ("/v1/completions", {"model": "m", "prompt": "x", "structured_outputs": "x"}, "structured_outputs"),
])
def test_what_vllm_lets_through_or_crashes_on_is_a_400_naming_the_field(client, path, body, param):
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
