"""tts_server.routes.playground: the playground's static files on a real hypercorn, with an API key configured.

The page must load without the key (it is typed into the page) while the API it calls still needs it;
only the files of the fixed table are served, whatever the path; nothing in them points elsewhere.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.tts_server.harness import get_all, serve, server_config
from tts_server.routes.playground import PLAYGROUND_DIR, load_files

API_KEY = "sk-playground-test-3c9e"
EXPECTED_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, api_key=API_KEY)) as served:
        yield served


async def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side normalization of ``..`` or escapes); (status, body)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout=10)  # to the server's close
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_the_page_and_its_files_are_served_with_their_types_and_cache_headers_without_a_key(srv):
    index, slash, *assets = get_all(
        srv, "/playground/", "/playground/index.html", *(f"/playground/{n}" for n in EXPECTED_TYPES)
    )
    assert index.status_code == 200 and index.text == slash.text
    assert 'id="speak"' in index.text and 'src="playground.js"' in index.text
    for name, response in zip(EXPECTED_TYPES, assets, strict=True):
        assert response.status_code == 200, (name, response.text)
        assert response.headers["content-type"] == EXPECTED_TYPES[name]
        assert response.content == (PLAYGROUND_DIR / name).read_bytes()
        assert response.headers["cache-control"] == "no-cache" and response.headers["etag"].startswith('"')
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_an_unchanged_file_is_revalidated_with_its_etag(srv):
    async def go():
        async with srv.client() as client:
            first = await client.get("/playground/playground.js")
            again = await client.get("/playground/playground.js", headers={"If-None-Match": first.headers["etag"]})
            other = await client.get("/playground/playground.js", headers={"If-None-Match": '"stale"'})
            head = await client.head("/playground/playground.js")
            return first, again, other, head

    first, again, other, head = srv.run(go())
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
    assert other.status_code == 200 and other.content == first.content
    assert head.status_code == 200 and head.content == b""


def test_the_root_and_the_bare_path_redirect_to_the_page(srv):
    async def go():
        async with srv.client() as client:
            return [await client.get(p) for p in ("/", "/playground")], await client.get("/", follow_redirects=True)

    redirects, followed = srv.run(go())
    for response in redirects:
        assert response.status_code == 307 and response.headers["location"] == "playground/"
    assert followed.status_code == 200 and str(followed.url).endswith("/playground/") and "<h1>" in followed.text


def test_the_api_the_page_calls_still_needs_the_key(srv):
    async def go():
        async with srv.client() as client:
            bearer = {"Authorization": f"Bearer {API_KEY}"}
            return (
                await client.get("/voices"),
                await client.get("/voices", headers={"Authorization": "Bearer wrong"}),
                await client.post("/generate", json={"target_text": "Hi."}),
                await client.get("/voices", headers=bearer),
            )

    missing, wrong, generate, keyed = srv.run(go())
    assert missing.status_code == wrong.status_code == generate.status_code == 401
    assert wrong.json()["error"]["message"] == "invalid API key"
    assert keyed.status_code == 200 and "voices" in keyed.json()


@pytest.mark.parametrize(
    "target",
    [
        "/playground/../routes/playground.py",
        "/playground/%2e%2e/routes/playground.py",
        "/playground/..%2Froutes%2Fplayground.py",
        "/playground/..%2f..%2fpyproject.toml",
        "/playground/%2e%2e",
        "/playground//etc/passwd",
        "/playground/missing.js",
        "/playground/playground",
    ],
)
def test_paths_outside_the_table_are_refused(srv, target):
    status, body = srv.run(raw_get(srv.url, target))
    assert status == 404, (target, body[:200])
    assert b"import" not in body and b"root:" not in body and b"[project]" not in body


def test_only_plain_files_of_known_types_in_the_folder_itself_are_servable(tmp_path: Path):
    (tmp_path / "index.html").write_text("<p>page</p>")
    (tmp_path / "app.js").write_text("1;")
    (tmp_path / "notes.py").write_text("secret = 1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.js").write_text("2;")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.css"
    outside.write_text("body{}")
    (tmp_path / "linked.css").symlink_to(outside)
    files = load_files(tmp_path)
    assert set(files) == {"index.html", "app.js"}
    assert files["app.js"].content_type == "text/javascript; charset=utf-8" and files["app.js"].body == b"1;"
    (tmp_path / "index.html").unlink()
    with pytest.raises(FileNotFoundError, match="index.html"):
        load_files(tmp_path)


def test_no_static_file_refers_to_another_host():
    # Any absolute URL would be a dependency on another machine (a CDN, fonts): the page must work offline.
    files = sorted(p for p in PLAYGROUND_DIR.iterdir() if p.is_file())
    assert {p.name for p in files} == set(EXPECTED_TYPES)
    for path in files:
        text = path.read_text()
        assert not re.search(r"(?i)\b(?:https?|wss?|ftp):|(?:src|href)\s*=\s*[\"']?//", text), path.name
        assert "@import" not in text and "url(" not in text, path.name
