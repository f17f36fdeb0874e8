"""The HTTP apps' API key (raytrade.serving.auth): where the key comes from, and what a request without it gets.

The middleware runs here on a small FastAPI app through httpx's ASGI transport (no Serve); the same check on the
deployed one-hop app over real HTTP is ``tests/test_serving_decision.py::test_with_an_api_key_only_requests_...``.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from raytrade.serving.auth import API_KEY_ENV, API_KEY_FILE_ENV, api_key
from raytrade.serving.ingress import add_error_handlers


def _app() -> FastAPI:
    app = FastAPI()
    add_error_handlers(app)
    calls = app.state.calls = []

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict() -> dict:
        calls.append(1)
        return {"ok": True}

    return app


def _send(app: FastAPI, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


def test_the_key_comes_from_the_environment_or_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(API_KEY_FILE_ENV, raising=False)
    assert api_key() is None
    (tmp_path / "key").write_text("  s3cret-from-file\n")
    monkeypatch.setenv(API_KEY_FILE_ENV, str(tmp_path / "key"))
    assert api_key() == "s3cret-from-file"
    monkeypatch.setenv(API_KEY_ENV, "from-env")  # the variable wins over the file
    assert api_key() == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    (tmp_path / "empty").write_text("\n")
    for path, words in ((tmp_path / "empty", "is empty"), (tmp_path / "missing", "cannot read")):
        monkeypatch.setenv(API_KEY_FILE_ENV, str(path))
        with pytest.raises(OSError, match=f"{API_KEY_FILE_ENV}={path}: .*{words}"):
            api_key()


def test_requests_without_the_key_are_refused_before_any_route(monkeypatch, tmp_path):
    monkeypatch.delenv(API_KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(API_KEY_ENV, "k3y")
    app = _app()
    assert _send(app, "GET", "/health").status_code == 200
    for headers in (None, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k3y"}, {"Authorization": "k3y"}):
        resp = _send(app, "POST", "/predict", headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer", headers
        assert resp.json()["detail"][0]["loc"] == ["header", "authorization"]
    assert app.state.calls == []
    assert _send(app, "POST", "/predict", {"Authorization": "Bearer k3y"}).status_code == 200
    assert _send(app, "POST", "/predict", {"authorization": "bearer k3y"}).status_code == 200  # scheme: any case
    assert app.state.calls == [1, 1]
    # a named key file that cannot be read: closed (503), never open
    monkeypatch.delenv(API_KEY_ENV)
    monkeypatch.setenv(API_KEY_FILE_ENV, str(tmp_path / "missing"))
    resp = _send(app, "POST", "/predict", {"Authorization": "Bearer k3y"})
    assert resp.status_code == 503 and resp.json()["detail"][0]["type"] == "api_key_unavailable"
    assert _send(app, "GET", "/health").status_code == 200 and app.state.calls == [1, 1]
    # no key configured: open, as before
    monkeypatch.delenv(API_KEY_FILE_ENV)
    assert _send(app, "POST", "/predict").status_code == 200
