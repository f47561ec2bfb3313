"""Tests of tts_server.http.schemas: the response models accept what the server builds and document it.

(That every served response matches its declared schema is tested over HTTP in ``routes/test_openapi.py``.)
"""

import pytest
from pydantic import ValidationError

from tts_server.errors import ApiError
from tts_server.http import schemas as s
from tts_server.openai_errors import openai_error_body
from tts_server.voices.entry import VoiceEntry, VoiceState


def test_error_bodies_validate_against_their_models():
    err = ApiError(404, "voice 'x' not found", field="voice", type="not_found")
    assert s.ErrorResponse.model_validate(err.body()).model_dump() == err.body()
    assert s.OpenAIErrorResponse.model_validate(openai_error_body(err)).model_dump() == openai_error_body(err)
    with pytest.raises(ValidationError):
        s.ErrorResponse.model_validate({"error": {"message": "no type"}})


def test_a_voice_description_validates():
    described = VoiceEntry("v", VoiceState.FAILED, error="damaged").describe()
    assert s.VoiceDescription.model_validate(described).model_dump(exclude_unset=True) == described


def test_response_models_allow_extra_fields_so_new_fields_are_not_breaking():
    models = [m for m in vars(s).values() if isinstance(m, type) and issubclass(m, s._Out) and m is not s._Out]
    assert len(models) >= 20
    for model in models:
        assert model.model_config.get("extra") == "allow", model.__name__
        assert model.__doc__, model.__name__  # the description the OpenAPI document shows


def test_health_status_is_one_of_its_documented_values():
    fields = dict(sample_rate=48000, available_voices=[], active_connections=0, max_concurrent_connections=4,
                  active_inference=0, queued_inference=0, max_inference_slots=2, server_state="ready",
                  engine_alive=True)  # fmt: skip
    assert s.HealthResponse(status="ok", **fields).status == "ok"
    with pytest.raises(ValidationError):
        s.HealthResponse(status="starting", **fields)
