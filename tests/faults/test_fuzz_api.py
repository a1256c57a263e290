"""Fuzz the chat service's HTTP API from its own OpenAPI document (schemathesis), against a
live ``unbroken chat`` process (Redis + PostgreSQL), with a bounded number of examples per
operation: no 5xx, no traceback in any response, every 4xx in the JSON error shape, and
every answer as the document describes it (its status, content type, headers and schema).

Requests carry an API key, so generated chats, resumes and stops reach real data.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from openapi_spec_validator import validate

from tests.faults.conftest import ApiServer

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.redis, pytest.mark.postgres]

EXAMPLES = 60  # per operation (positive and negative cases); about 10 s in all


def openapi_document() -> dict[str, Any]:
    """The document the live instance serves at /openapi.json, built in process so the tests
    can be generated at collection time (the instance starts later, in a fixture)."""
    from unbroken.chat.app import create_app
    from unbroken.chat.settings import Settings

    document: dict[str, Any] = create_app(Settings()).openapi()
    return document


schema = schemathesis.openapi.from_dict(openapi_document())
#: What must hold of every answer, as the document says it.
CONFORMANCE = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run (a reproducible suite)
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_fuzz(case: Any, api_server: ApiServer) -> None:
    response = case.call(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.api_key}"},
        timeout=30,
    )
    status = response.status_code
    body: bytes = response.content
    where = f"{case.method} {case.formatted_path} -> {status}: {body[:300]!r}"
    assert status < 500, where
    assert b"Traceback" not in body and b'File "/' not in body, where
    if 400 <= status < 500:
        document = json.loads(body)
        assert set(document) == {"error"}, where
        assert isinstance(document["error"].get("code"), str), where
        assert isinstance(document["error"].get("message"), str), where
    case.validate_response(response, checks=CONFORMANCE)


def test_the_document_is_valid_openapi() -> None:
    validate(openapi_document())


def test_the_served_document_is_the_one_fuzzed(api_server: ApiServer) -> None:
    import httpx

    assert httpx.get(f"{api_server.url}/openapi.json").json() == openapi_document()


def test_the_fuzzed_instance_survived(api_server: ApiServer) -> None:
    assert api_server.process.alive
    assert not api_server.process.crashes(), api_server.process.crashes()
