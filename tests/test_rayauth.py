"""Ray's token authentication for raytrade's entry points (raytrade.rayauth): where the token comes from (Ray's
order), a new token's file, and when a client process switches token authentication on.

The token at work on real Ray processes: ``tests/test_jobs.py`` (a head started with ``ray start`` refuses the Jobs
API without it) and ``tests/test_local_cluster.py`` (the multi-node cluster).
"""

from __future__ import annotations

import stat

import pytest

from raytrade import rayauth


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere Ray looks: no variables, and a home without ~/.ray/auth_token."""
    for name in (rayauth.TOKEN_ENV, rayauth.TOKEN_PATH_ENV, rayauth.MODE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_the_token_is_found_in_rays_order(no_token, monkeypatch):
    assert rayauth.find_token() is None and rayauth.auth_headers() == {}
    home_file = no_token / "home" / ".ray" / "auth_token"
    home_file.parent.mkdir(parents=True)
    home_file.write_text("from-home\n")
    assert rayauth.find_token() == "from-home" and rayauth.token_source() == str(home_file)
    named = no_token / "named"
    named.write_text("from-path")
    monkeypatch.setenv(rayauth.TOKEN_PATH_ENV, str(named))
    assert rayauth.find_token() == "from-path"  # the named file wins over ~/.ray/auth_token
    monkeypatch.setenv(rayauth.TOKEN_ENV, "from-env")
    assert rayauth.find_token() == "from-env" and rayauth.token_source() == "$RAY_AUTH_TOKEN"
    assert rayauth.auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv(rayauth.TOKEN_ENV, " ")  # empty counts as none
    assert rayauth.find_token() == "from-path"


def test_ensure_token_keeps_an_existing_token_and_writes_a_new_one_private(no_token, monkeypatch):
    path = no_token / "home" / ".ray" / "auth_token"
    token = rayauth.ensure_token()
    assert len(token) == 64 and path.read_text() == token  # 256 random bits, hex, where Ray looks
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert rayauth.ensure_token() == token  # kept, not replaced
    monkeypatch.setenv(rayauth.TOKEN_PATH_ENV, str(no_token / "cluster" / "token"))
    assert rayauth.ensure_token() != token and (no_token / "cluster" / "token").is_file()


def test_a_client_switches_token_auth_on_only_with_a_token_and_keeps_an_explicit_mode(no_token, monkeypatch):
    import os

    assert rayauth.enable_for_client() is False and rayauth.MODE_ENV not in os.environ
    monkeypatch.setenv(rayauth.MODE_ENV, "disabled")
    monkeypatch.setenv(rayauth.TOKEN_ENV, "t")
    assert rayauth.enable_for_client() is False and os.environ[rayauth.MODE_ENV] == "disabled"
    monkeypatch.setenv(rayauth.MODE_ENV, "token")
    assert rayauth.enable_for_client() is True
