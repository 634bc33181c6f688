"""Property-based fuzzing of the running broker from its OpenAPI: no 5xx, and every error is a ProblemDetails.

Schemathesis generates requests for every operation of `GET /openapi.json`, valid ones
(positive mode) and ones that break the schema (negative mode), and sends them over real HTTP
to the session's broker, every request in one fresh tenant (`NGSILD-Tenant`) so nothing else
in the run is disturbed. The whole run is bounded by `FUZZ_BUDGET_S` and is deterministic
(Hypothesis derandomized) unless the environment asks for a longer, random hunt.

The broker reads its request bodies itself (so that it can answer 400/413/415 precisely), which
means its OpenAPI document declares no request bodies. Without help, Schemathesis would only
vary paths, query strings and headers and every write would stop at "415 / empty body". So the
test adds NGSI-LD-shaped body schemas (`REQUEST_BODIES`) to the write operations before
generating; Hypothesis then produces entities, fragments, batches and queries that are nearly
valid, valid or broken. Subscriptions, registrations and user @contexts keep no body schema:
a generated notification endpoint, registration endpoint or remote @context URL would make the
broker reach out to arbitrary hosts, and tests use loopback only.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

# A longer hunt: CLIMABOROUGH_FUZZ_BUDGET_S=600 CLIMABOROUGH_FUZZ_EXAMPLES=100 CLIMABOROUGH_FUZZ_RANDOM=1.
FUZZ_BUDGET_S = float(os.environ.get("CLIMABOROUGH_FUZZ_BUDGET_S", "50"))
EXAMPLES_PER_OPERATION = int(os.environ.get("CLIMABOROUGH_FUZZ_EXAMPLES", "12"))
DERANDOMIZE = not os.environ.get("CLIMABOROUGH_FUZZ_RANDOM")
REQUEST_TIMEOUT_S = 15.0
SEEDED_ID = "urn:ngsi-ld:Room:fuzz-seed"

URN = {"type": "string", "pattern": r"^urn:ngsi-ld:(Room|AirQualityObserved):[a-z0-9]{1,6}$"}
TIMESTAMP = {"anyOf": [
    {"type": "string", "pattern": r"^20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]T[01][0-9]:[0-5][0-9]:[0-5][0-9]Z$"},
    {"type": "string"},
]}  # fmt: skip
GEOMETRY = {
    "type": "object",
    "properties": {
        "type": {"enum": ["Point", "LineString", "Polygon", "MultiPoint", "Circle"]},
        "coordinates": {"type": "array", "maxItems": 4,
                        "items": {"anyOf": [{"type": "number"}, {"type": "array", "maxItems": 4}]}},
    },
    "required": ["type", "coordinates"],
}
ATTRIBUTE: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "type": {"enum": ["Property", "Relationship", "GeoProperty", "LanguageProperty", "VocabProperty",
                                  "JsonProperty", "ListProperty"]},
                "value": {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}, GEOMETRY,
                                    {"type": "object", "maxProperties": 3}, {"type": "array", "maxItems": 3}]},
                "object": {"anyOf": [URN, {"type": "string"}, {"type": "array", "maxItems": 2}]},
                "languageMap": {"type": "object", "maxProperties": 2, "additionalProperties": {"type": "string"}},
                "observedAt": TIMESTAMP,
                "unitCode": {"type": "string", "maxLength": 4},
                "datasetId": {"anyOf": [URN, {"type": "string"}]},
            },
            "required": ["type"],
            "maxProperties": 5,
        },
        {"type": ["number", "string", "boolean", "null"]},
        {"type": "array", "maxItems": 3},
    ]
}  # fmt: skip
ATTRIBUTE_NAME = {"type": "string", "pattern": r"^(temperature|pm25|name|location|[a-zA-Z][a-zA-Z0-9]{0,7})$"}
FRAGMENT = {"type": "object", "propertyNames": ATTRIBUTE_NAME, "additionalProperties": ATTRIBUTE, "maxProperties": 4}
ENTITY = {
    "type": "object",
    "properties": {
        "id": {"anyOf": [URN, {"type": "string"}]},
        "type": {"anyOf": [{"enum": ["Room", "AirQualityObserved"]}, {"type": "string"},
                           {"type": "array", "maxItems": 2, "items": {"type": "string"}}]},
        "location": {"type": "object", "properties": {"type": {"const": "GeoProperty"}, "value": GEOMETRY}},
        "temperature": ATTRIBUTE,
    },
    "propertyNames": {"anyOf": [ATTRIBUTE_NAME, {"enum": ["id", "type", "scope"]}]},
    "additionalProperties": ATTRIBUTE,
    "required": ["id", "type"],
    "maxProperties": 6,
}
QUERY = {
    "type": "object",
    "properties": {
        "type": {"const": "Query"},
        "entities": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {
            "type": {"type": "string"}, "id": {"type": "string"}, "idPattern": {"type": "string"}}}},
        "attrs": {"type": "array", "maxItems": 3, "items": {"type": "string"}},
        "q": {"anyOf": [{"enum": ["temperature>20", "pm25==1..9;name~=a", "a.b[c]<1|d"]}, {"type": "string"}]},
        "geoQ": {"type": "object", "properties": {
            "georel": {"anyOf": [{"enum": ["near;maxDistance==10", "within", "intersects"]}, {"type": "string"}]},
            "geometry": {"type": "string"}, "coordinates": {"anyOf": [{"type": "string"}, {"type": "array"}]}}},
    },
    "required": ["type"],
}  # fmt: skip

# (method, path) -> JSON Schema of the body; paths as in the broker's OpenAPI document.
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/ngsi-ld/v1/entities"): ENTITY,
    ("put", "/ngsi-ld/v1/entities/{entity_id}"): ENTITY,
    ("patch", "/ngsi-ld/v1/entities/{entity_id}"): FRAGMENT,
    ("post", "/ngsi-ld/v1/entities/{entity_id}/attrs"): FRAGMENT,
    ("patch", "/ngsi-ld/v1/entities/{entity_id}/attrs"): FRAGMENT,
    ("put", "/ngsi-ld/v1/entities/{entity_id}/attrs/{attr}"): ATTRIBUTE,
    ("patch", "/ngsi-ld/v1/entities/{entity_id}/attrs/{attr}"): ATTRIBUTE,
    ("post", "/ngsi-ld/v1/entityOperations/create"): {"type": "array", "maxItems": 4, "items": ENTITY},
    ("post", "/ngsi-ld/v1/entityOperations/upsert"): {"type": "array", "maxItems": 4, "items": ENTITY},
    ("post", "/ngsi-ld/v1/entityOperations/update"): {"type": "array", "maxItems": 4, "items": ENTITY},
    ("post", "/ngsi-ld/v1/entityOperations/merge"): {"type": "array", "maxItems": 4, "items": ENTITY},
    ("post", "/ngsi-ld/v1/entityOperations/delete"): {"type": "array", "maxItems": 4,
                                                      "items": {"anyOf": [URN, {"type": "string"}]}},
    ("post", "/ngsi-ld/v1/entityOperations/query"): QUERY,
    ("post", "/ngsi-ld/v1/temporal/entities"): ENTITY,
    ("post", "/ngsi-ld/v1/temporal/entities/{entity_id}/attrs"): FRAGMENT,
    ("patch", "/ngsi-ld/v1/temporal/entities/{entity_id}/attrs/{attr}/{instance_id}"): FRAGMENT,
    ("post", "/ngsi-ld/v1/temporal/entities/query"): QUERY,
}
# Reach out of loopback if they get generated bodies or arbitrary URLs (see the module docstring).
LEAVE_BODYLESS = ("/ngsi-ld/v1/subscriptions", "/ngsi-ld/v1/csourceRegistrations", "/ngsi-ld/v1/jsonldContexts")


def with_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """The broker's OpenAPI document with NGSI-LD body schemas on the write operations."""
    document = copy.deepcopy(document)
    for (method, path), body in REQUEST_BODIES.items():
        operation = document["paths"].get(path, {}).get(method)
        if operation is not None and "requestBody" not in operation:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return document


def problem_details_violation(response: Any) -> str | None:
    """Why an error response is not an RFC 7807 ProblemDetails body with `type` and `title`, or None."""
    try:
        body = response.json()
    except ValueError:
        return f"error body is not JSON: {response.content[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not isinstance(body.get("title"), str):
        return f"error body is not ProblemDetails: {str(body)[:300]}"
    return None


@pytest.fixture
def seeded_tenant(broker_url: str, tenant: str) -> str:
    """A fresh tenant with one entity in it, so that reads find a database and an entity."""
    entity = {"id": SEEDED_ID, "type": "Room", "temperature": {"type": "Property", "value": 21.5},
              "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [8.6, 41.1]}}}
    answer = httpx.post(f"{broker_url}/ngsi-ld/v1/entities", json=entity, headers={"NGSILD-Tenant": tenant},
                        timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 201, answer.text
    return tenant


class OutOfTime(Exception):
    """This operation's share of the time budget is spent."""


@dataclass
class FuzzRun:
    """What the fuzz sent and what went wrong, across all operations."""

    broker_url: str
    tenant: str
    session: requests.Session
    failures: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    plans_done: int = 0

    def fuzz(self, operation: Any, mode: GenerationMode, path_parameters: dict[str, Any] | None,
             until: float) -> None:
        """Send up to EXAMPLES_PER_OPERATION generated requests of `operation`, stopping at `until`."""
        strategy = operation.as_strategy(generation_mode=mode, headers={"NGSILD-Tenant": self.tenant},
                                         path_parameters=path_parameters)

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=DERANDOMIZE,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def send(case: schemathesis.Case) -> None:
            if time.monotonic() > until:
                raise OutOfTime
            self.send(case)

        try:
            send()
        except (OutOfTime, Unsatisfiable):
            pass  # Unsatisfiable: nothing to break in this operation in negative mode

    def send(self, case: schemathesis.Case) -> None:
        request = case.as_curl_command(base_url=self.broker_url)
        try:
            response = case.call(base_url=self.broker_url, session=self.session, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as error:
            self.failures.append(f"{request}\n  -> no answer: {error!r}")
            return
        self.statuses[response.status_code] += 1
        problem = None
        if response.status_code >= 500:
            problem = f"HTTP {response.status_code}: {response.content[:400]!r}"
        elif response.status_code >= 400 and response.content:
            problem = problem_details_violation(response)
        if problem:
            self.failures.append(f"{request}\n  -> {problem}")


def test_fuzzing_the_openapi_finds_no_server_errors(broker_url: str, seeded_tenant: str) -> None:
    document = httpx.get(f"{broker_url}/openapi.json", timeout=REQUEST_TIMEOUT_S).json()
    schema = schemathesis.openapi.from_dict(with_request_bodies(document))
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) > 20, "the broker's OpenAPI document lists too few operations to fuzz"

    # Operations with bodies first: that is where the broker's own parsing and rules are.
    operations.sort(key=lambda operation: len(operation.body) == 0)
    plans: list[tuple[Any, GenerationMode, dict[str, Any] | None]] = []
    for operation in operations:
        plans.append((operation, GenerationMode.POSITIVE, None))
        if "{entity_id}" in operation.path:
            plans.append((operation, GenerationMode.POSITIVE, {"entity_id": SEEDED_ID}))
        if (len(operation.body) or len(operation.query)) and not operation.path.startswith(LEAVE_BODYLESS):
            plans.append((operation, GenerationMode.NEGATIVE, None))

    deadline = time.monotonic() + FUZZ_BUDGET_S
    with requests.Session() as session:
        run = FuzzRun(broker_url, seeded_tenant, session)
        for number, (operation, mode, path_parameters) in enumerate(plans):
            now = time.monotonic()
            if now >= deadline:
                break
            # At most twice an equal share of what is left, so that every plan gets its turn.
            share = 2 * (deadline - now) / (len(plans) - number)
            run.fuzz(operation, mode, path_parameters, min(deadline, now + share))
            run.plans_done += 1

    sent = sum(run.statuses.values())
    print(f"fuzz: {sent} requests, {run.plans_done}/{len(plans)} plans over {len(operations)} operations, "
          f"statuses {dict(sorted(run.statuses.items()))}")
    assert sent >= len(operations), f"only {sent} requests were sent in {FUZZ_BUDGET_S}s"
    assert any(200 <= status < 300 for status in run.statuses), "no generated request succeeded: the fuzz is blind"
    assert not run.failures, f"{len(run.failures)} bad answers, first ones:\n" + "\n".join(run.failures[:15])


@pytest.mark.parametrize("query", [
    "type=Room&offset=6526263862256395607867392",
    "type=Room&offset=9223372036854775808",
    "type=Room&georel=near%3BmaxDistance%3D%3D1000&geometry=Point&coordinates=%5B8.6,41.1%5D&offset=9223372036854775807",
])  # fmt: skip
def test_offsets_beyond_postgresql_bigint_are_answered_without_a_server_error(
    broker_url: str, seeded_tenant: str, query: str
) -> None:
    # Found by the fuzz: an offset over 2**63-1 reached PostgreSQL's OFFSET and came back as a 500.
    answer = httpx.get(f"{broker_url}/ngsi-ld/v1/entities?{query}", headers={"NGSILD-Tenant": seeded_tenant},
                       timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    else:
        assert answer.json() == []
