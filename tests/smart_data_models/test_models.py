"""The Smart Data Models accept every official example and reject what the official schemas reject."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from smart_data_models import (
    MODEL_TYPES,
    UPSTREAM_ERRATA,
    AirQualityObserved,
    InvalidSmartDataModel,
    KeyPerformanceIndicator,
    SchemaValidator,
    WeatherObserved,
    from_ngsi_ld,
)
from smart_data_models.validation import SCHEMA_FILES, load_schema_file

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ("AirQualityObserved", "WeatherObserved", "KeyPerformanceIndicator")
EXAMPLES = ("example.json", "example-normalized.json", "example.jsonld", "example-normalized.jsonld")


def load_example(model: str, name: str) -> dict[str, Any]:
    example: dict[str, Any] = json.loads((FIXTURES / model / name).read_text(encoding="utf-8"))
    return example


def aqo_key_values() -> dict[str, Any]:
    example = load_example("AirQualityObserved", "example.jsonld")
    example.pop("@context")
    return example


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_official_example_is_accepted(model: str, example: str) -> None:
    entity = from_ngsi_ld(load_example(model, example))

    assert isinstance(entity, MODEL_TYPES[model])
    assert entity.type == model


def test_the_shipped_schemas_are_the_official_files_verbatim() -> None:
    for model, file_name in SCHEMA_FILES.items():
        assert load_schema_file(file_name) == json.loads((FIXTURES / model / "schema.json").read_text())
    for common in ("common-schema.json", "Environment-schema.json", "weather-schema.json"):
        assert load_schema_file(common) == json.loads((FIXTURES / "common" / common).read_text())


@pytest.mark.parametrize("erratum", UPSTREAM_ERRATA, ids=lambda e: f"{e.entity_type}.{e.attribute}")
def test_each_erratum_is_needed_by_the_official_example_it_names(erratum: Any) -> None:
    model, example_name = erratum.example.split("/")
    key_values = from_ngsi_ld(load_example(model, example_name)).model_dump(mode="json", by_alias=True)
    key_values = {k: v for k, v in key_values.items() if v is not None}
    strict = SchemaValidator(errata=())

    fields = {violation.field for violation in strict.violations(model, key_values)}

    assert erratum.attribute in fields


def test_keyvalues_data_validates_as_a_model_with_typed_fields() -> None:
    aqo = AirQualityObserved.model_validate(aqo_key_values())

    assert aqo.no2 == 69
    assert aqo.co == 500
    assert aqo.dateObserved == datetime(2016, 3, 15, 11, 0, tzinfo=UTC)
    assert aqo.location["type"] == "Point"
    assert aqo.model_extra == {"typeOfLocation": "outdoor"}


def test_arsenic_is_reachable_although_as_is_a_python_keyword() -> None:
    aqo = AirQualityObserved.model_validate({**aqo_key_values(), "as": 0.4})

    assert aqo.as_ == 0.4
    assert aqo.key_values()["as"] == 0.4


MUTATIONS: list[tuple[str, str, Any, str]] = [
    ("wrong type literal", "type", "AirQualityObservation", "type"),
    ("location without coordinates", "location", {"type": "Point"}, "location"),
    ("location with too few coordinates", "location", {"type": "Point", "coordinates": [3.1]}, "location"),
    ("location that is not GeoJSON", "location", "Plaza de España", "location"),
    ("non-numeric measurand", "no2", "sixty-nine", "no2"),
    ("negative concentration", "pm10", -4, "pm10"),
    ("dateObserved that is no date", "dateObserved", "yesterday", "dateObserved"),
    ("dateObserved without a time", "dateObserved", "2016-03-15", "dateObserved"),
    ("humidity above 1", "relativeHumidity", 54, "relativeHumidity"),
    ("air quality index as a fraction", "airQualityIndex", 6.5, "airQualityIndex"),
    ("id with spaces", "id", "not an id", "id"),
    ("relationship to a number", "refDevice", 42, "refDevice"),
]


@pytest.mark.parametrize(("case", "attribute", "value", "field"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_what_the_schema_rejects_is_rejected_naming_the_field(
    case: str, attribute: str, value: Any, field: str
) -> None:
    bad = {**aqo_key_values(), attribute: value}

    with pytest.raises(ValidationError) as raised:
        AirQualityObserved.model_validate(bad)

    message = str(raised.value)
    assert f"{field}:" in message or f"{field}." in message


@pytest.mark.parametrize("required", ["id", "dateObserved", "location"])
def test_missing_required_attribute_is_rejected_naming_it(required: str) -> None:
    bad = aqo_key_values()
    del bad[required]

    with pytest.raises(ValidationError, match=f"{required}: '{required}' is a required property"):
        AirQualityObserved.model_validate(bad)


def test_a_normalized_entity_breaking_the_schema_is_a_bad_request_naming_the_attribute() -> None:
    entity = load_example("WeatherObserved", "example-normalized.jsonld")
    entity["windSpeed"] = {"type": "Property", "value": "strong"}

    with pytest.raises(InvalidSmartDataModel) as raised:
        from_ngsi_ld(entity)

    assert raised.value.status == 400
    assert "windSpeed: 'strong' is not of type 'number'" in raised.value.detail
    assert raised.value.to_problem()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


def test_unknown_entity_types_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(InvalidSmartDataModel, match="AirQualityObserved, KeyPerformanceIndicator"):
        from_ngsi_ld({"id": "urn:ngsi-ld:Parking:1", "type": "Parking"})


def test_weather_and_kpi_enums_are_enforced() -> None:
    weather = load_example("WeatherObserved", "example.json")
    kpi = load_example("KeyPerformanceIndicator", "example.json")

    with pytest.raises(ValidationError, match="windDirection"):
        WeatherObserved.model_validate({**weather, "windDirection": 400})
    with pytest.raises(ValidationError, match="calculationFrequency"):
        KeyPerformanceIndicator.model_validate({**kpi, "calculationFrequency": "sometimes"})
    with pytest.raises(ValidationError, match=r"category\.0"):
        KeyPerformanceIndicator.model_validate({**kpi, "category": ["vague"]})


def test_validation_never_mutates_the_input() -> None:
    original = aqo_key_values()
    given = copy.deepcopy(original)

    AirQualityObserved.model_validate(given)

    assert given == original
