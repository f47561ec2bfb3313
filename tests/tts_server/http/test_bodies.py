"""Tests of tts_server.http.bodies: content type, size limits, JSON validation naming the field, base64.

The bodies are sent over HTTP to a small Starlette app under a real hypercorn (one per module), whose
endpoints parse them with the module's functions and render errors with the server's handler.
"""

import base64
import json

import httpx
import pytest
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.tts_server.serving import AppServer, LoopRunner
from tts_server.errors import ApiError, api_error_handler
from tts_server.http.bodies import DEFAULT_MAX_BODY_BYTES, body_limit, decode_base64, parse_body, read_body

LIMIT = 1000


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: int = 0


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    items: list[Item] = []


async def parsed(request: Request) -> JSONResponse:
    return JSONResponse((await parse_body(request, Body)).model_dump())


async def small(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await read_body(request, max_bytes=10))})


async def raw(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await read_body(request)), "limit": body_limit(request)})


@pytest.fixture(scope="module")
def url():
    runner = LoopRunner()
    app = Starlette(
        routes=[
            Route("/parse", parsed, methods=["POST"]),
            Route("/small", small, methods=["POST"]),
            Route("/raw", raw, methods=["POST"]),
        ],  # fmt: skip
        exception_handlers={ApiError: api_error_handler},
    )
    app.state.max_body_bytes = LIMIT
    server = AppServer(app)
    base = runner.run(server.start())
    yield base, runner
    runner.run(server.stop())
    runner.close()


def post(url, path, content: bytes | None = None, headers=None, **kwargs) -> httpx.Response:
    base, runner = url

    async def go():
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await client.post(path, content=content, headers=headers, **kwargs)

    return runner.run(go())


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


JSON = {"content-type": "application/json"}


def test_a_valid_body_is_parsed(url):
    doc = {"text": "hi", "items": [{"name": "a", "size": 2}]}
    for content_type in ("application/json", "Application/JSON; charset=utf-8", "application/vnd.api+json"):
        response = post(url, "/parse", json.dumps(doc).encode(), {"content-type": content_type})
        assert response.status_code == 200 and response.json() == doc, content_type
    bom = post(url, "/parse", b"\xef\xbb\xbf" + json.dumps(doc).encode(), JSON)  # a UTF-8 BOM is ignored
    assert bom.status_code == 200 and bom.json() == doc


@pytest.mark.parametrize(
    "headers, words",
    [
        ({"content-type": "text/plain"}, "Content-Type must be application/json (got 'text/plain')"),
        ({"content-type": "application/jsonp"}, "Content-Type must be application/json (got 'application/jsonp')"),
        ({}, "Content-Type must be application/json (none given)"),
    ],
)
def test_a_body_that_is_not_json_is_415(url, headers, words):
    err = error(post(url, "/parse", b'{"text": "hi"}', headers), 415)
    assert err["type"] == "unsupported_media_type" and err["message"] == words


def test_a_compressed_body_is_415_naming_the_header(url):
    err = error(post(url, "/parse", b'{"text": "hi"}', {**JSON, "content-encoding": "gzip"}), 415)
    assert err["field"] == "Content-Encoding" and "'gzip' is not supported" in err["message"]
    assert post(url, "/parse", b'{"text": "hi"}', {**JSON, "content-encoding": "identity"}).status_code == 200


def test_the_app_limit_the_endpoint_limit_and_the_default(url):
    at_limit = post(url, "/raw", b"x" * LIMIT)
    assert at_limit.json() == {"bytes": LIMIT, "limit": LIMIT}
    err = error(post(url, "/raw", b"x" * (LIMIT + 1)), 413)
    assert err == {"type": "too_large", "message": "request body of 1001 bytes exceeds the limit of 1000 bytes",
                   "field": None}  # fmt: skip
    assert error(post(url, "/small", b"x" * 11), 413)["message"].endswith("the limit of 10 bytes")  # max_bytes wins
    assert post(url, "/small", b"x" * 10).json() == {"bytes": 10}
    assert DEFAULT_MAX_BODY_BYTES == 25 * 1024 * 1024
    err = error(post(url, "/parse", b'{"text": "' + b"x" * LIMIT + b'"}', JSON), 413)
    assert err["type"] == "too_large"


def test_a_chunked_body_is_counted_as_it_streams(url):
    async def chunks():
        for _ in range(5):
            yield b"x" * 300

    err = error(post(url, "/raw", chunks()), 413)  # no Content-Length: refused once past the limit
    assert err["message"] == "request body of more than 1000 bytes exceeds the limit of 1000 bytes"

    async def fits():
        yield b"x" * 500
        yield b"x" * 500

    assert post(url, "/raw", fits()).json()["bytes"] == LIMIT


@pytest.mark.parametrize(
    "content, field, message",
    [
        (b"", None, "request body is empty; expected a JSON object"),
        (b"  \n", None, "request body is empty; expected a JSON object"),
        (b'{"text": ', None, "request body is not valid JSON: "),
        (b"[1, 2]", None, "request body must be a JSON object"),
        (b'"text"', None, "request body must be a JSON object"),
        (b"{}", "text", "text: required"),
        (b'{"text": 5}', "text", "text: Input should be a valid string"),
        (b'{"text": "hi", "voice": "x"}', "voice", "voice: unknown field"),
        (b'{"text": "hi", "items": [{"name": "a"}, {"size": 1}]}', "items.1.name", "items.1.name: required"),
        (
            b'{"text": "hi", "items": [{"name": 1, "size": "big"}]}',
            "items.0.name",
            "items.0.name: Input should be a valid string (and 1 more problem)",
        ),  # fmt: skip
        (b'{"text": 1, "items": [{"name": 1, "size": "big"}]}', "text", "(and 2 more problems)"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(url, content, field, message):
    err = error(post(url, "/parse", content, JSON), 400)
    assert err["field"] == field and err["type"] == "invalid_request"
    assert err["message"].startswith(message) or err["message"].endswith(message), err["message"]


def _b64_error(value, field="audio") -> ApiError:
    with pytest.raises(ApiError) as err:
        decode_base64(value, field)
    assert (err.value.status, err.value.field) == (400, field) and err.value.message.startswith(f"{field}: ")
    return err.value


def test_base64_decodes_plain_data_uris_and_mime_line_breaks():
    data = bytes(range(256)) * 3
    text = base64.b64encode(data).decode()
    assert decode_base64(text, "audio") == data
    assert decode_base64(f"data:audio/wav;base64,{text}", "audio") == data
    wrapped = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64(wrapped, "audio") == data
    assert decode_base64("", "audio", allow_empty=True) == b""


@pytest.mark.parametrize(
    "value, words",
    [
        (123, "must be a base64 string, got int"),
        (None, "must be a base64 string, got NoneType"),
        ("", "is empty"),
        ("data:audio/wav,AAAA", "a data URI must be ';base64,' encoded"),
        ("data:audio/wav;base64", "a data URI must be ';base64,' encoded"),
        ("not base64!", "not valid base64"),
        ("AAA", "not valid base64"),  # bad padding
        ("AA AA_-", "not valid base64"),  # the URL-safe alphabet is not accepted
    ],
)
def test_base64_errors_name_the_field(value, words):
    assert words in _b64_error(value, "prompt_audio").message


@pytest.mark.parametrize("chunked", [False, True])
def test_the_413_arrives_while_the_client_is_still_sending(url, chunked):
    # Far more than the limit still on its way when the server answers: the server reads and drops
    # it (up to 1 MiB) before it closes, else the kernel's reset can destroy the 413 unread.
    size = 768 * 1024

    async def chunks():
        for _ in range(size // 4096):
            yield b"x" * 4096

    for _ in range(5):
        response = post(url, "/raw", chunks() if chunked else b"x" * size)
        assert error(response, 413)["type"] == "too_large"
