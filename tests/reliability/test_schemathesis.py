"""Schemathesis against ``/openapi.json`` of the live shared server: no 5xx, every response as documented.

Each operation of the document gets generated requests (valid and invalid bodies, path parameters,
headers) sent with the admin key (which every endpoint accepts) and validated with schemathesis's
checks: ``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
``response_headers_conformance``, ``response_schema_conformance``, ``negative_data_rejection``
(invalid input must be a 4xx), ``ignored_auth`` (the same request without the key must be refused),
``unsupported_method`` and the rest of schemathesis's default set, minus the exclusions below.

Exclusions, each needed:

- ``positive_data_acceptance``: a schema-valid body is not always an acceptable request, for
  reasons JSON Schema cannot express: ``prompt_audio``/``ref_audio`` must be base64 of decodable
  audio, ``voice`` must name a registered voice (404 otherwise), ``prompt_text`` goes with prompt
  audio, ``min_generate_length`` must not exceed ``max_generate_length``, and text must fit the
  model context after cleanup. Those answers are 4xx by design (``test_bad_inputs`` names them).
- Generation cost: ``max_generate_length`` is capped at the server's ``--default-max-generate-length``
  (3 patches) and ``inference_timesteps`` at 10, and ``target_text``/``input`` at 200 characters,
  so that one generated request costs well under a second on the tiny CPU model rather than
  minutes (up to 100 000 patches x 100 sampler steps x segments of 4096 characters). Only valid
  values above those caps are lowered; invalid ones (out of range, wrong type) are left alone, so
  their validation is still fuzzed, and the upper limits are tested in ``test_bad_inputs``.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.reliability.conftest import ADMIN_KEY
from tests.server_process import Server

MAX_EXAMPLES = 8
# field: (cap, the schema's maximum); values above the maximum are invalid input and stay as they are
_CAPS = {"max_generate_length": (3, 100_000), "min_generate_length": (3, 100_000), "inference_timesteps": (10, 100)}
_TEXT_CAP = (200, 4096)


def _cheapen(body: object) -> None:
    """Lower generation-cost fields of a valid-looking body (see the module docstring)."""
    if not isinstance(body, dict):
        return
    for name, (cap, maximum) in _CAPS.items():
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and cap < value <= maximum:
            body[name] = cap
    cap, maximum = _TEXT_CAP
    for name in ("target_text", "input"):
        value = body.get(name)
        if isinstance(value, str) and cap < len(value) <= maximum:
            body[name] = value[:cap]


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    """The live server's OpenAPI document."""
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: schemathesis.Case, server: Server):
    _cheapen(case.body)
    case.call_and_validate(
        base_url=server.url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        excluded_checks=[positive_data_acceptance],
        timeout=60,
    )
