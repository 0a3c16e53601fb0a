"""schemathesis over the gateway's OpenAPI schema: generated requests never get a 5xx, and every
successful JSON response matches the route's documented response model.

Plain model ids go to the fake upstream (the default provider here), so nothing leaves loopback.
Driven through hypothesis directly (schemathesis's pytest plugin does not load under pytest 9)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import response_schema_conformance

from gateway_helpers import Gateway
from panelfuse.testing import Script


def test_no_server_errors(fake, tmp_path):
    fake.default = Script(text="fine")
    gw = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db").start()
    try:
        schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
        checked: list[str] = []
        validated: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def no_5xx(case):
                response = case.call(timeout=30)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
                )
                if response.status_code >= 400 and "json" in str(response.headers.get("content-type", "")):
                    body = response.json()
                    if case.operation.path == "/v1/messages":  # Anthropic's API, Anthropic's error shape
                        assert body["type"] == "error" and {"message", "type"} <= set(body["error"])
                    else:
                        assert {"message", "type", "param", "code"} <= set(body["error"])
                if response.status_code < 300 and "json" in str(response.headers.get("content-type", "")):
                    case.validate_response(response, checks=[response_schema_conformance])
                    validated.append(case.operation.path)

            no_5xx()
            checked.append(f"{operation.method.upper()} {operation.path}")
        assert "POST /v1/chat/completions" in checked and len(checked) >= 10
        # responses were checked on the routes that answer JSON
        assert {"/v1/models", "/v1/fusion/runs", "/v1/chat/completions"} <= set(validated)
    finally:
        gw.stop()
