"""Tests of tts_server.errors: the ApiError JSON shape, its status and headers, and the orjson response."""

import asyncio
import json

import numpy as np
import pytest

from tts_server.errors import ApiError, JSONResponse, api_error_handler, error_response


def test_api_error_fields_and_defaults():
    err = ApiError(404, "voice 'x' not found", field="voice", type="not_found", headers={"X-A": "1"})
    assert (err.status, err.message, err.field, err.type, err.headers) == (
        404, "voice 'x' not found", "voice", "not_found", {"X-A": "1"},
    )  # fmt: skip
    assert str(err) == "voice 'x' not found" and isinstance(err, Exception)
    plain = ApiError(400, "bad")
    assert (plain.field, plain.type, plain.headers) == (None, "invalid_request", {})


def test_body_is_the_documented_shape():
    assert ApiError(400, "text: required", field="text").body() == {
        "error": {"type": "invalid_request", "message": "text: required", "field": "text"}
    }
    assert ApiError(503, "busy", type="overloaded").body() == {
        "error": {"type": "overloaded", "message": "busy", "field": None}
    }


def test_error_response_carries_status_headers_and_json():
    err = ApiError(503, "queue timeout", type="overloaded", headers={"Retry-After": "2"})
    response = error_response(err)
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == err.body()


def test_headers_are_copied_not_shared():
    given = {"Retry-After": "1"}
    err = ApiError(503, "x", headers=given)
    given["Retry-After"] = "9"
    assert err.headers == {"Retry-After": "1"}


def test_json_response_serializes_numpy():
    response = JSONResponse({"rate": np.int64(48000), "peak": np.float32(0.5), "shape": np.array([1, 2])})
    assert json.loads(response.body) == {"rate": 48000, "peak": 0.5, "shape": [1, 2]}


def test_the_handler_renders_api_errors():
    err = ApiError(409, "duplicate", field="request_id", type="conflict")
    response = asyncio.run(api_error_handler(None, err))  # type: ignore[arg-type]
    assert response.status_code == 409 and json.loads(response.body)["error"]["field"] == "request_id"
    with pytest.raises(AssertionError):
        asyncio.run(api_error_handler(None, ValueError("not ours")))  # type: ignore[arg-type]
