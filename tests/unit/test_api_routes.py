"""The generating routes parse each body with vLLM's model of its endpoint and answer vLLM's 400 when it fails."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("vllm")

from fastapi import Depends, FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler  # noqa: E402
from vllm.entrypoints.serve.utils.api_utils import validate_json_request  # noqa: E402

from serving.api import GENERATING_ROUTES, generating_route  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


class EchoIngress:
    async def serve(self, endpoint, request, raw_request):
        return JSONResponse({"endpoint": endpoint, "model": type(request).__name__})


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    init_exception_handler(app)
    app.state.args = argparse.Namespace(log_error_stack=False)
    for endpoint, path in GENERATING_ROUTES.items():
        app.add_api_route(path, generating_route(EchoIngress(), endpoint), methods=["POST"],
                          dependencies=[Depends(validate_json_request)])
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
