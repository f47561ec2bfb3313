"""HTTP edge cases of the request itself, against the shared server (issue 15, item 11).

- ``Authorization`` given twice (with different keys): 400 naming the header, never "the last one wins".
- A compressed body (``Content-Encoding: gzip``): 415 naming the header, instead of being parsed as JSON.
- A JSON body that starts with a UTF-8 byte order mark: accepted like the same body without it.
- An idle keep-alive connection is still open after 6 s (longer than common clients keep one).
"""

from __future__ import annotations

import gzip
import json
import time

import httpx

from tests.reliability.conftest import ADMIN_KEY, API_KEY
from tests.reliability.raw_http import connect, read_response
from tests.server_process import Server

BODY = {"target_text": "Edge.", "max_generate_length": 2, "response_format": "pcm"}


def test_a_duplicate_authorization_header_is_400(server: Server):
    headers = [
        ("Content-Type", "application/json"),
        ("Authorization", f"Bearer {ADMIN_KEY}"),
        ("Authorization", f"Bearer {API_KEY}"),
    ]
    with httpx.Client(timeout=30) as client:
        for path in ("/generate", "/voices"):
            request = httpx.Request("POST", f"{server.url}{path}", headers=headers, content=json.dumps(BODY).encode())
            response = client.send(request)
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["field"] == "Authorization"


def test_a_compressed_body_is_415(server: Server):
    data = gzip.compress(json.dumps(BODY).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with server.client() as client:
        for path in ("/generate", "/v1/audio/speech"):
            response = client.post(path, content=data, headers=headers)
            assert response.status_code == 415, (path, response.text)
            error = response.json()["error"]
            assert "Content-Encoding" in error["message"] and "gzip" in error["message"]


def test_a_utf8_byte_order_mark_is_accepted(server: Server):
    data = b"\xef\xbb\xbf" + json.dumps(BODY).encode()
    with server.client() as client:
        response = client.post("/generate", content=data, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert response.content


def test_an_idle_keep_alive_connection_outlives_the_clients_own_timeout(server: Server):
    # httpx keeps an idle connection 5 s, AWS ALB 60 s: a server that closes it first races the
    # next request on it (the client sees "disconnected without a response").
    sock = connect(server.url)
    try:
        for pause in (6.0, 0.0):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = read_response(sock, 10)
            assert answer.status == 200, answer.head
            time.sleep(pause)
    finally:
        sock.close()
