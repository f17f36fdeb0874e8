"""Ray Serve's HTTP proxy answers 503 (retry), not 500, for a request whose replica died before answering.

When the replica holding a request dies (SIGKILL, OOM, a lost node), the proxy gets ``ActorDiedError`` and, for any
error but a timeout, back-pressure or an unavailable deployment, finishes the request without starting a response,
so uvicorn sends a bare ``500 Internal Server Error`` (``ray/serve/_private/http_util.py``,
``send_http_response_on_exception``). Nothing retries it: Serve retries only requests a replica has not accepted
(the router drops the dead replica at once, so the next request goes to a live one). A client must be told to
retry, which is what 503 with ``Retry-After`` says. Serve has no setting for that status, but the proxy takes ASGI
middlewares from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``; :func:`get_middlewares` is that callback.

The variable must be in the environment of the process that starts Ray (``ray start`` on each node, or the driver
that calls ``ray.init``), which the proxy actors inherit: :func:`raytrade.runtime.enable_serve_proxy_503` sets it
before raytrade starts Ray, the Makefile exports it, and with ``serve run`` / ``ray start`` export it yourself::

    export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=raytrade.serving.proxy:get_middlewares
"""

from __future__ import annotations

from typing import Any

_BODY = (b'{"detail": [{"loc": [], "msg": "the replica serving this request was lost before it answered; retry the '
         b'request", "type": "replica_unavailable"}]}')


class ReplicaLostAs503:
    """ASGI middleware: when the app below finishes (or fails) without having started a response, answer 503 with
    ``Retry-After: 1`` and the ingress's ``replica_unavailable`` error body. A response already started is left as
    it is."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
        if not started:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(_BODY)).encode()), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": _BODY})


def get_middlewares() -> list[Any]:
    """The proxy's middlewares (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` callback)."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLostAs503)]
