"""RequestGuard on a small FastAPI app: API keys, declared and undeclared (chunked) body sizes."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.guard import RequestGuard, authorized

LIMIT = 1024


@pytest.fixture
def client():
    app = FastAPI()
    app.add_middleware(RequestGuard)
    app.state.api_keys = ["k1", "k2"]
    app.state.max_body_bytes = LIMIT

    @app.post("/v1/echo")
    async def echo(request: Request):
        body = await request.body()
        return {"received": len(body)}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return TestClient(app)


AUTH = {"Authorization": "Bearer k2"}


def chunks(total: int, size: int = 100):
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


def test_keys_are_required_on_v1_only(client):
    assert client.post("/v1/echo", content=b"{}").status_code == 401
    assert client.post("/v1/echo", content=b"{}", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/v1/echo", content=b"{}", headers={"Authorization": "Basic k2"}).status_code == 401
    assert client.post("/v1/echo", content=b"{}", headers=AUTH).json() == {"received": 2}
    assert client.get("/health").status_code == 200
    error = client.post("/v1/echo", content=b"{}").json()["error"]
    assert error["type"] == "AuthenticationError" and error["code"] == 401 and "param" in error


def test_declared_size_over_the_limit_is_refused_before_reading(client):
    response = client.post("/v1/echo", content=b"x" * (LIMIT + 1), headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "RequestTooLargeError"
    assert client.post("/v1/echo", content=b"x" * LIMIT, headers=AUTH).json() == {"received": LIMIT}


def test_chunked_bodies_are_counted_as_they_arrive(client):
    response = client.post("/v1/echo", content=chunks(LIMIT + 1), headers=AUTH)
    assert response.status_code == 413, response.text
    assert "exceeds the limit of 1024" in response.json()["error"]["message"]
    # Under the limit, the app receives the whole chunked body, unchanged in length.
    assert client.post("/v1/echo", content=chunks(LIMIT), headers=AUTH).json() == {"received": LIMIT}
    assert client.post("/v1/echo", content=chunks(0), headers=AUTH).json() == {"received": 0}


def test_unauthorized_requests_are_refused_before_their_body_is_read(client):
    assert client.post("/v1/echo", content=chunks(10 * LIMIT)).status_code == 401


@pytest.mark.parametrize("path,header,keys,ok", [
    ("/v1/completions", "", [], True),
    ("/v1/completions", "Bearer a", ["a"], True),
    ("/v1/completions", "bearer  a ", ["a"], True),
    ("/v1/completions", "Bearer b", ["a"], False),
    ("/v1/completions", "", ["a"], False),
    ("/health", "", ["a"], True),
    ("/pdserve/stats", "", ["a"], True),
])
def test_authorized(path, header, keys, ok):
    assert authorized(path, header, keys) is ok
