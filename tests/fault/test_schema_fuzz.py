"""Fuzz the OpenAPI schema with schemathesis against the real gateway (engine and Redis included).

Positive and negative cases, a bounded number per operation so the suite stays fast. Checked on every
response: no 5xx, the status is one the schema documents, the body and headers conform to it (every error has
the one error schema). ``positive_data_acceptance`` is left out on purpose: the schema cannot express every
rule (a query or a history must be given and known, ``top_k <= beam_width <= GR_MAX_BEAM_WIDTH``), so some
schema-valid bodies get a documented 422.

Afterwards the metrics' labels are checked: fuzzed input must never become a label value.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.generation.modes import GenerationMode

from service.errors import CLIENT_CLOSED, ServiceError
from tests.gateway import Gateway

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


EXAMPLES = 40  # per operation and mode: ~300 requests, about a minute with the real engine


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_conforms_to_its_schema(gateway: Gateway, mode: GenerationMode) -> None:
    # (schemathesis' lazy pytest loader does not work with pytest 9; its strategies under hypothesis do)
    api = schemathesis.openapi.from_url(f"{gateway.base}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /retrieve", "GET /readyz"}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance], timeout=30)

        try:
            run()
        except Unsatisfiable:
            # no input to break: the GET endpoints take no parameters, so there is no negative case
            assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET", operation.path


def _all_codes() -> set[str]:
    codes: set[str] = set()
    stack: list[type] = [ServiceError]
    while stack:
        cls = stack.pop()
        codes.add(cls.code)  # type: ignore[attr-defined]
        stack.extend(cls.__subclasses__())
    return codes | {CLIENT_CLOSED, "ok", "error", "bad_request", "not_found", "method_not_allowed", "http_error"}


def test_metric_labels_come_from_fixed_sets(gateway: Gateway) -> None:
    """After the fuzzing: outcome and status labels are error codes and statuses, never request content."""
    text = httpx.get(f"{gateway.base}/metrics", timeout=10).text
    outcomes, statuses = set(), set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert set(s.labels) <= {"outcome", "status", "stage", "le"}, s
            outcomes.add(s.labels.get("outcome"))
            statuses.add(s.labels.get("status"))
    outcomes.discard(None)
    statuses.discard(None)
    assert outcomes and outcomes <= _all_codes(), outcomes - _all_codes()
    assert statuses <= {"200", "401", "404", "405", "410", "413", "422", "429", "499", "500", "503", "504"}
    assert "500" not in statuses
