"""Tests of tts_server.routes.openapi: the OpenAPI document lists every route, validates, and matches the responses."""

import jsonschema
import openapi_spec_validator
import pytest
import referencing
import referencing.jsonschema
from starlette.routing import Route

from tests.tts_server.harness import get_all, serve, server_config
from tts_server.routes.openapi import build_openapi


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, max_num_seqs=2)) as served:
        yield served


def test_openapi_lists_every_route_and_validates(srv):
    (doc,) = get_all(srv, "/openapi.json")
    spec = doc.json()
    assert spec["openapi"].startswith("3.1")
    # The WebSocket one: docs/stream_protocol; the playground's page is not part of the API (include_in_schema).
    http_routes = [r for r in srv.app.routes if isinstance(r, Route) and r.include_in_schema]
    served = {(r.path, m.lower()) for r in http_routes for m in r.methods if m != "HEAD"}
    documented = {(p, m) for p, item in spec["paths"].items() for m in item}
    assert served == documented
    for item in spec["paths"].values():
        for op in item.values():
            assert "default" in op["responses"] and any(code.startswith("2") for code in op["responses"])
    openapi_spec_validator.validate(spec)


def test_responses_match_their_declared_schemas(srv):
    spec, *responses = get_all(srv, "/openapi.json", "/health", "/status", "/ready", "/queue", "/info", "/voices")

    async def errors():
        async with srv.client() as client:
            return [
                ("/generate", "post", await client.post("/generate", json={"target_text": 1})),
                ("/cancel", "post", await client.post("/cancel", json={"request_id": "x"})),
                ("/v1/audio/speech", "post", await client.post("/v1/audio/speech", json={"input": ""})),
                ("/voices/{name}", "get", await client.get("/voices/none-such")),
            ]

    doc = spec.json()
    registry = referencing.Registry().with_resource("urn:api", referencing.jsonschema.DRAFT202012.create_resource(doc))
    paths = ["/health", "/status", "/ready", "/queue", "/info", "/voices"]
    checks = [(p, "get", r) for p, r in zip(paths, responses, strict=True)] + srv.run(errors())
    for path, method, response in checks:
        declared = doc["paths"][path][method]["responses"]
        entry = declared.get(str(response.status_code), declared["default"])
        schema = entry["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator({"$ref": "urn:api" + schema["$ref"]}, registry=registry)
        validator.validate(response.json())


def test_the_document_is_built_from_the_request_models_and_the_docs_page_is_self_contained(srv):
    doc, docs = get_all(srv, "/openapi.json", "/docs")
    assert doc.json() == build_openapi()  # served as built, deterministic
    spec = build_openapi()
    generate = spec["paths"]["/generate"]["post"]
    body = generate["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/GenerateRequest"}
    assert "target_text" in spec["components"]["schemas"]["GenerateRequest"]["properties"]
    speech = spec["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert speech["default"]["content"]["application/json"]["schema"]["$ref"].endswith("OpenAIErrorResponse")
    assert generate["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert docs.headers["content-type"].startswith("text/html") and "openapi.json" in docs.text
    assert '<script src="http' not in docs.text and "cdn" not in docs.text.lower()  # no CDN
