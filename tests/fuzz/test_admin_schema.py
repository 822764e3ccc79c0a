"""The admin API fuzzed against its own OpenAPI schema (schemathesis), on a live server.

Every operation gets valid and invalid inputs generated from the schema, a bounded number per
operation; no answer may be a 5xx, and every error has the admin envelope
``{"error": {"code", "message", "field"}}``, naming the field for a malformed request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.liveserver import ADMIN_TOKEN, LiveServer

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES = 30  # per operation: about 35 operations, each example one request


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # A server of its own: the fuzzer creates projects and changes schemas at random.
    srv = LiveServer(
        tmp_path_factory.mktemp("schemathesis") / "data",
        OPENCDP_JOB_WORKERS="1",
        OPENCDP_MAX_UPLOAD_BYTES="65536",
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fuzzed(admin_server: LiveServer) -> dict[str, Any]:
    """A project with a few profiles and events, which every ``{ref}`` names."""
    info = admin_server.new_project("fuzzed")
    for i in range(3):
        r = requests.post(
            admin_server.url + "/api/v1/api/import",
            params={"secret": info["api_token"]},
            json={
                "type": "event",
                "event": "buy",
                "properties": {
                    "mobile": f"1380000000{i}",
                    "event_id": f"e{i}",
                    "create_time": "2024-05-01 10:00:00",
                    "amount": i,
                },
            },
            timeout=30,
        )
        assert r.json()["errcode"] == 0, r.text
    return info


def _check(case: Any, server: LiveServer, ref: str) -> None:
    if case.path_parameters and "ref" in case.path_parameters:
        case.path_parameters["ref"] = ref  # reach past the project lookup
    response = case.call(base_url=server.url, headers=AUTH, timeout=60)
    label = f"{case.method} {case.formatted_path} -> {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, label
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "field"}, label
        assert error["code"] != "internal" and error["message"], label
        if error["code"] == "validation_failed":
            assert error["field"] and error["field"] in error["message"], label


def test_no_operation_answers_5xx(admin_server: LiveServer, fuzzed: dict[str, Any]) -> None:
    # The schema is read from the live server, as a client would; every operation is fuzzed
    # with cases that fit the schema and cases that do not.
    schema = schemathesis.openapi.from_url(admin_server.url + "/admin/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 25
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                _check(case, admin_server, fuzzed["name"])

            try:
                fuzz()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing in it can be made invalid
            except AssertionError as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n".join(failures)
