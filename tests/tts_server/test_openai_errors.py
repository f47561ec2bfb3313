"""Tests of tts_server.openai_errors: OpenAI's error shape for /v1/ paths, this API's shape elsewhere."""

import json

import pytest

from tts_server.errors import ApiError
from tts_server.openai_errors import error_response_for, openai_error_body, openai_error_response


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            ApiError(400, "input: required", field="input"),
            {"message": "input: required", "type": "invalid_request_error", "param": "input",
             "code": "invalid_request", "field": "input"},
        ),
        (
            ApiError(404, "voice 'x' not found", field="voice", type="not_found"),
            {"message": "voice 'x' not found", "type": "invalid_request_error", "param": "voice",
             "code": "not_found", "field": "voice"},
        ),
        (
            ApiError(503, "the server is shutting down", type="overloaded"),
            {"message": "the server is shutting down", "type": "server_error", "param": None,
             "code": "overloaded", "field": None},
        ),
        (
            ApiError(500, "boom", type="engine_error"),
            {"message": "boom", "type": "server_error", "param": None, "code": "engine_error", "field": None},
        ),
    ],
)  # fmt: skip
def test_openai_error_body(error, expected):
    assert openai_error_body(error) == {"error": expected}


def test_openai_error_response_keeps_status_and_headers():
    err = ApiError(503, "busy", type="overloaded", headers={"Retry-After": "3"})
    response = openai_error_response(err)
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert json.loads(response.body)["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    "path, openai_shape",
    [("/v1/audio/speech", True), ("/v1/models", True), ("/generate", False), ("/v1", False), ("/voices/v1/", False)],
)
def test_the_shape_follows_the_path(path, openai_shape):
    err = ApiError(400, "x: bad", field="x")
    body = json.loads(error_response_for(path, err).body)["error"]
    assert ("param" in body) is openai_shape and body["message"] == "x: bad" and body["field"] == "x"
    assert body["type"] == ("invalid_request_error" if openai_shape else "invalid_request")
