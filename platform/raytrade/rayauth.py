"""Ray's token authentication for raytrade's entry points: on, as in Ray 2.60 by default.

With ``RAY_AUTH_MODE=token`` every Ray process (GCS, raylets, workers, the dashboard and its Jobs / Serve REST API)
accepts only callers holding the cluster's token. Ray looks for the token, in this order, in ``$RAY_AUTH_TOKEN``,
the file ``$RAY_AUTH_TOKEN_PATH`` and ``~/.ray/auth_token``; a local ``ray.init()`` with the mode unset turns token
authentication on and writes that file if none exists, and ``ray start`` turns it on when a token exists
(``ray get-auth-token --generate`` makes one). Clients of a running cluster (``raytrade submit``, ``raytrade
serve --address``) switch it on here when a token is available, so a user only has to have the token.

Source: Ray's ``ray._private.authentication`` (token lookup and generation), https://docs.ray.io/en/latest/ray-security/token-auth.html
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MODE_ENV", "TOKEN_ENV", "TOKEN_PATH_ENV", "auth_headers", "default_token_path", "enable_for_client",
           "ensure_token", "find_token", "token_source"]

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    """``~/.ray/auth_token``: where Ray writes and looks for a token when no environment variable names one."""
    return Path.home() / ".ray" / "auth_token"


def find_token() -> str | None:
    """The token Ray would use, in Ray's order (``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``), or None when there is none. An empty value counts as none."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    named = os.environ.get(TOKEN_PATH_ENV)
    path = Path(named).expanduser() if named else default_token_path()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def token_source() -> str:
    """Where :func:`find_token` reads the token: ``$RAY_AUTH_TOKEN``, or the file's path."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return f"${TOKEN_ENV}"
    named = os.environ.get(TOKEN_PATH_ENV)
    return str(Path(named).expanduser() if named else default_token_path())


def ensure_token() -> str:
    """The available token (:func:`find_token`), or a new one (256 random bits, Ray's generator) written where Ray
    looks (``$RAY_AUTH_TOKEN_PATH`` if set, else ``~/.ray/auth_token``, mode 0600) when there is none: what a new
    cluster's nodes and its clients on this machine then share."""
    token = find_token()
    if token:
        return token
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    token = generate_new_authentication_token()
    named = os.environ.get(TOKEN_PATH_ENV)
    path = Path(named).expanduser() if named else default_token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token)
    return token


def enable_for_client() -> bool:
    """Before talking to a running cluster's Jobs / Serve REST API from this process: switch token authentication
    on (``RAY_AUTH_MODE=token``, so Ray's SDK clients send ``Authorization: Bearer <token>``) when the mode is unset
    and a token is available, as ``ray start`` and ``ray.init(address=...)`` do. An explicit ``RAY_AUTH_MODE`` is
    kept. Returns whether token authentication is on."""
    mode = os.environ.get(MODE_ENV)
    if mode is not None:
        return mode.lower() == "token"
    if find_token() is None:
        return False
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` for a plain HTTP call to a dashboard (empty when there is no
    token)."""
    token = find_token()
    return {"Authorization": f"Bearer {token}"} if token else {}
