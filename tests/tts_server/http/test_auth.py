"""Who may see voice names on the open probes, and whose requests ``/queue`` and ``/cancel`` reach.

(Access levels and the middleware are tested over HTTP in ``test_admission.py``.)
"""

from tts_server.http.auth import client_key, has_work_access, request_owner


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
