"""Tests of tts_server.http.auth: access levels, client keys, who may see voice names, whose requests
``/queue`` and ``/cancel`` reach.

(The middleware that applies them is tested over HTTP in ``test_admission.py``.)
"""

import pytest

from tts_server.errors import ApiError
from tts_server.http.auth import Access, check_access, client_key, has_work_access, request_owner, required_access


def test_voice_names_need_a_key_only_when_one_is_configured():
    assert has_work_access(None, api_key=None, admin_key=None)  # an open server lists them to anyone
    assert has_work_access(None, api_key=None, admin_key="adm")  # only voice management is guarded
    assert has_work_access("Bearer k", api_key="k", admin_key=None)
    assert has_work_access("Bearer adm", api_key="k", admin_key="adm")
    for authorization in (None, "", "Bearer", "Bearer wrong", "Basic k", "Bearer k2"):
        assert not has_work_access(authorization, api_key="k", admin_key="adm"), authorization


def test_owner_is_the_client_key_except_for_the_admin_key_and_open_servers():
    # No API key: everyone sees and cancels everything (the behaviour before scoping).
    assert request_owner("alice", None, api_key=None, admin_key=None) is None
    assert request_owner(None, "Bearer adm", api_key=None, admin_key="adm") is None
    # API key: the caller owns what it registered under the same client key.
    assert request_owner(None, "Bearer k", api_key="k", admin_key="adm") == client_key(None, "Bearer k")
    assert request_owner("alice", "Bearer k", api_key="k", admin_key="adm") == "alice"
    assert request_owner("alice", "Bearer k", api_key="k", admin_key="adm") != request_owner(
        "bob", "Bearer k", api_key="k", admin_key="adm"
    )
    # The admin key sees every request, whatever X-Client-Id says.
    assert request_owner("alice", "Bearer adm", api_key="k", admin_key="adm") is None
    # Without a separate admin key nobody is admin: the API key standing in for it is not enough.
    assert request_owner(None, "Bearer k", api_key="k", admin_key=None) == client_key(None, "Bearer k")


def test_access_levels_and_client_keys():
    assert required_access("GET", "/health") is Access.OPEN
    assert required_access("GET", "/voices") is Access.USER
    assert required_access("DELETE", "/voices/x") is Access.ADMIN
    assert required_access("POST", "/add_prompt") is Access.ADMIN
    assert required_access("POST", "/encode_latents") is Access.USER
    # The playground's page is open (the key is typed into it); a look-alike path is not.
    for path in ("/", "/playground", "/playground/", "/playground/playground.js"):
        assert required_access("GET", path) is Access.OPEN, path
    assert required_access("GET", "/playgroundx") is Access.USER
    check_access(Access.ADMIN, None, api_key=None, admin_key=None)  # nothing configured: open
    with pytest.raises(ApiError) as info:
        check_access(Access.USER, "Basic abc", api_key="k", admin_key=None)
    assert info.value.status == 401 and info.value.headers["WWW-Authenticate"] == "Bearer"
    check_access(Access.ADMIN, "bearer k", api_key="k", admin_key="k")  # without an admin key, the API key guards
    assert client_key(" alice ", "Bearer k") == "alice"
    digest = client_key(None, "Bearer secret-key")
    assert digest.startswith("key:") and "secret" not in digest and digest == client_key("", "Bearer secret-key")
    assert client_key(None, None) == ""
