"""The HTTP layer under the routes: admission, auth, transport, request bodies, response schemas, errors, OpenAPI."""
