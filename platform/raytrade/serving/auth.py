"""The HTTP apps' API key: with a key configured in a replica's environment, every request but ``GET /health`` must
carry ``Authorization: Bearer <key>``, or it is answered 401 before it reaches any route, model or store.

The key comes from the environment of the process that serves the app (a Serve replica), never from a config file
in git:

* ``RAYTRADE_API_KEY``: the key itself (for a secret manager that injects environment variables), or
* ``RAYTRADE_API_KEY_FILE``: a file holding it (a mounted secret; surrounding whitespace is ignored).

Neither set: the app is open, as before. A key file that is named but unreadable or empty makes every request but
``/health`` a 503 (``api_key_unavailable``): the app fails closed rather than serving without the key. In a Serve
config the variables go in the application's ``runtime_env: {env_vars: {RAYTRADE_API_KEY_FILE: /path/on/nodes}}``;
the key is read once per replica process, so a new key takes a redeploy. Keys are compared in constant time
(``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
import os
from functools import lru_cache

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["API_KEY_ENV", "API_KEY_FILE_ENV", "OPEN_PATHS", "api_key", "require_api_key"]

API_KEY_ENV = "RAYTRADE_API_KEY"
API_KEY_FILE_ENV = "RAYTRADE_API_KEY_FILE"
#: routes answered without the key (a load balancer's health check)
OPEN_PATHS = frozenset({"/health"})


@lru_cache(maxsize=4)
def _read(value: str | None, path: str | None) -> str | None:
    if value and value.strip():
        return value.strip()
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise OSError(f"{API_KEY_FILE_ENV}={path}: cannot read the API key file ({exc.strerror})") from None
        if not key:
            raise OSError(f"{API_KEY_FILE_ENV}={path}: the API key file is empty")
        return key
    return None


def api_key() -> str | None:
    """The configured API key (``RAYTRADE_API_KEY``, else the contents of ``RAYTRADE_API_KEY_FILE``), or None when
    neither is set.

    Raises:
        OSError: the key file is named but cannot be read, or is empty (the message names the variable and path).
    """
    return _read(os.environ.get(API_KEY_ENV), os.environ.get(API_KEY_FILE_ENV))


def _path(request: Request) -> str:
    path, root = request.scope.get("path", ""), request.scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _detail(status: int, msg: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"loc": ["header", "authorization"], "msg": msg,
                                                                 "type": kind}]}, headers=headers)


def require_api_key(app: FastAPI) -> None:
    """Add the API key check to ``app`` (every raytrade HTTP app gets it from
    :func:`raytrade.serving.ingress.add_error_handlers`): 401 with ``WWW-Authenticate: Bearer`` for a request without
    the configured key, 503 when the key file is unreadable; no effect when no key is configured."""

    @app.middleware("http")
    async def _api_key(request: Request, call_next):  # noqa: ANN202, ANN001
        try:
            key = api_key()
        except OSError as exc:
            if _path(request) in OPEN_PATHS:
                return await call_next(request)
            return _detail(503, f"the server's API key is not available: {exc}", "api_key_unavailable")
        if key is None or _path(request) in OPEN_PATHS:
            return await call_next(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            return _detail(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)
