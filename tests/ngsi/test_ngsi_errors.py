"""Every NGSI-LD error renders as RFC 7807 ProblemDetails with the ETSI type URI and its HTTP status."""

from __future__ import annotations

import pytest

from ngsi import errors

ETSI = "https://uri.etsi.org/ngsi-ld/errors/"


@pytest.mark.parametrize(
    ("error_class", "status"),
    [
        (errors.InvalidRequest, 400),
        (errors.BadRequestData, 400),
        (errors.AlreadyExists, 409),
        (errors.OperationNotSupported, 422),
        (errors.ResourceNotFound, 404),
        (errors.InternalError, 500),
        (errors.TooComplexQuery, 403),
        (errors.TooManyResults, 403),
        (errors.LdContextNotAvailable, 503),
        (errors.NoMultiTenantSupport, 501),
        (errors.NonexistentTenant, 404),
        (errors.UnsupportedMediaType, 415),
        (errors.NotAcceptable, 406),
        (errors.PayloadTooLarge, 413),
        (errors.MethodNotAllowed, 405),
    ],
)
def test_error_types_have_the_etsi_uri_and_status(error_class: type[errors.NgsiError], status: int) -> None:
    error = error_class("what went wrong")
    problem = error.to_problem()
    assert problem == {
        "type": ETSI + error_class.__name__,
        "title": error.title,
        "status": status,
        "detail": "what went wrong",
    }
    assert isinstance(error, errors.NgsiError)
    assert error.title


def test_extra_members_are_added_to_the_problem() -> None:
    problem = errors.BadRequestData("no2: value missing", attribute="no2").to_problem()
    assert problem["attribute"] == "no2"
    assert problem["detail"] == "no2: value missing"


def test_context_timeout_may_report_gateway_timeout() -> None:
    assert errors.LdContextNotAvailable("slow", status=504).to_problem()["status"] == 504


def test_a_client_rebuilds_the_error_from_the_problem_body() -> None:
    original = errors.ResourceNotFound("urn:ngsi-ld:Thing:1 not found", entity="urn:ngsi-ld:Thing:1")
    rebuilt = errors.error_from_problem(original.to_problem())
    assert type(rebuilt) is errors.ResourceNotFound
    assert rebuilt.to_problem() == original.to_problem()


def test_unknown_problem_types_are_kept() -> None:
    rebuilt = errors.error_from_problem({"type": "https://example.org/Oops", "title": "Oops", "status": 418})
    assert rebuilt.type == "https://example.org/Oops"
    assert rebuilt.status == 418
