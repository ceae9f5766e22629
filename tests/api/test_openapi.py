"""The running API against its own OpenAPI spec (schemathesis): generated requests, valid and
not, to every operation of `python -m worker api`; no 5xx, and every response as the spec says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.api.conftest import API_KEY, ROOT, api_process, livekit_in_thread
from worker.api.app import create_app
from worker.api.auth import ApiKeys
from worker.api.sessions import SessionService
from worker.config import load_registry
from worker.settings import ApiSettings

SPEC = create_app(
    SessionService(load_registry(ROOT / "prompts"), ApiSettings(), "unused", "unused"),
    ApiKeys([API_KEY]),
    rate_limit=1,
).openapi()
schema = schemathesis.openapi.from_dict(SPEC)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = Path(tmp_path_factory.mktemp("api")) / "api.log"
    # a rate limit no run reaches: the limiter has its own test
    with (
        livekit_in_thread() as livekit,
        api_process(
            livekit, log, WORKER_API_RATE_LIMIT="100000", WORKER_API_FAILED_AUTH_LIMIT="100000"
        ) as url,
    ):
        yield url


def test_the_spec_documents_every_status_the_api_sends() -> None:
    create = SPEC["paths"]["/v1/voice-sessions"]["post"]["responses"]
    assert set(create) == {"201", "400", "401", "404", "413", "429", "503"}
    assert "422" not in str(SPEC)
    assert {"APIKeyHeader", "HTTPBearer"} <= set(SPEC["components"]["securitySchemes"])


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_matches_the_spec_and_none_is_a_server_error(
    case: schemathesis.Case[Any], api_url: str
) -> None:
    # Not checked: that every schema-valid body is accepted. An agent's own call limit and the
    # context's 4 KB as JSON are not expressible in the schema; both are 400s with a reason.
    case.call_and_validate(
        base_url=api_url,
        headers={"X-API-Key": API_KEY},
        excluded_checks=[positive_data_acceptance],
    )
