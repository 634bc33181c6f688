"""Smart Data Models become NGSI-LD entities and come back unchanged; ids and units follow the platform rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smart_data_models import (
    DEFAULT_UNIT_CODES,
    AirQualityObserved,
    KeyPerformanceIndicator,
    WeatherObserved,
    entity_id,
    from_ngsi_ld,
    to_ngsi_ld,
)

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ("AirQualityObserved", "WeatherObserved", "KeyPerformanceIndicator")
EXAMPLES = ("example.json", "example-normalized.json", "example.jsonld", "example-normalized.jsonld")


def load_example(model: str, name: str) -> dict[str, Any]:
    example: dict[str, Any] = json.loads((FIXTURES / model / name).read_text(encoding="utf-8"))
    return example


def madrid_station() -> AirQualityObserved:
    return AirQualityObserved(
        id=entity_id("AirQualityObserved", "madrid", "28079004"),
        dateObserved=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
        location={"type": "Point", "coordinates": [-3.7122, 40.4238]},
        no2=41.5,
        pm10=18.0,
        co=0.4,
        temperature=17.2,
        relativeHumidity=0.61,
        airQualityLevel="moderate",
        refDevice="urn:ngsi-ld:Device:madrid:28079004",
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("form", ["normalized", "keyValues"])
def test_official_examples_round_trip_through_ngsi_ld(model: str, example: str, form: Any) -> None:
    original = from_ngsi_ld(load_example(model, example))

    again = from_ngsi_ld(to_ngsi_ld(original, form=form))

    # NGSI-v2 examples have plain ids; NGSI-LD needs URIs, so those become URNs on the way.
    assert again.model_dump(exclude={"id", "refDevice", "refPointOfInterest"}) == original.model_dump(
        exclude={"id", "refDevice", "refPointOfInterest"}
    )
    assert again.id.startswith("urn:ngsi-ld:" + model + ":")
    assert again.id.endswith(original.id)
    assert to_ngsi_ld(again, form=form) == to_ngsi_ld(original, form=form)


@pytest.mark.parametrize("form", ["normalized", "keyValues"])
def test_a_model_round_trips_to_an_equal_model(form: Any) -> None:
    station = madrid_station()

    assert from_ngsi_ld(to_ngsi_ld(station, form=form)) == station


def test_normalized_form_types_every_attribute_and_stamps_measurements() -> None:
    entity = to_ngsi_ld(madrid_station())

    assert entity["id"] == "urn:ngsi-ld:AirQualityObserved:madrid:28079004"
    assert entity["location"] == {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [-3.7122, 40.4238]},
    }
    assert entity["dateObserved"] == {
        "type": "Property",
        "value": {"@type": "DateTime", "@value": "2024-05-01T10:00:00.000Z"},
    }
    assert entity["no2"] == {
        "type": "Property",
        "value": 41.5,
        "unitCode": "GQ",
        "observedAt": "2024-05-01T10:00:00.000Z",
    }
    assert entity["co"]["unitCode"] == "GP"
    assert entity["temperature"]["unitCode"] == "CEL"
    assert entity["relativeHumidity"]["unitCode"] == "P1"
    assert entity["airQualityLevel"] == {
        "type": "Property",
        "value": "moderate",
        "observedAt": "2024-05-01T10:00:00.000Z",
    }
    assert entity["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:madrid:28079004"}
    assert entity["@context"] == [
        "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"
    ]


def test_every_measured_property_of_an_official_example_carries_observed_at() -> None:
    weather = from_ngsi_ld(load_example("WeatherObserved", "example-normalized.jsonld"))

    entity = to_ngsi_ld(weather, context=None)

    measured = [name for name in entity if name in WeatherObserved.measured_attributes]
    assert measured, "the example has measurements"
    for name in measured:
        assert entity[name]["observedAt"] == "2016-11-30T07:00:00.000Z", name
    assert entity["atmosphericPressure"]["unitCode"] == "HPA"
    assert entity["windSpeed"]["unitCode"] == "MTS"
    assert entity["precipitation"]["unitCode"] == "MMT"
    assert "@context" not in entity


def test_keyvalues_form_is_plain_values_with_urn_relationships() -> None:
    entity = to_ngsi_ld(madrid_station(), form="keyValues", context=["https://example.org/ctx.jsonld"])

    assert entity["no2"] == 41.5
    assert entity["dateObserved"] == "2024-05-01T10:00:00.000Z"
    assert entity["refDevice"] == "urn:ngsi-ld:Device:madrid:28079004"
    assert entity["@context"] == ["https://example.org/ctx.jsonld"]


def test_concise_and_expanded_names_are_understood() -> None:
    concise = {
        "id": "urn:ngsi-ld:AirQualityObserved:madrid:1",
        "type": "https://smartdatamodels.org/dataModel.Environment/AirQualityObserved",
        "dateObserved": {"value": {"@type": "DateTime", "@value": "2024-05-01T10:00:00Z"}},
        "location": {"type": "Point", "coordinates": [-3.7, 40.4]},
        "https://smartdatamodels.org/dataModel.Environment/no2": {"value": 30, "unitCode": "GQ"},
        "refDevice": {"object": "urn:ngsi-ld:Device:1"},
        "createdAt": "2024-05-01T10:00:01.000Z",
    }

    aqo = from_ngsi_ld(concise)

    assert isinstance(aqo, AirQualityObserved)
    assert aqo.no2 == 30
    assert aqo.refDevice == "urn:ngsi-ld:Device:1"
    assert "createdAt" not in aqo.key_values()


def test_a_unit_from_the_source_survives_the_round_trip() -> None:
    entity = to_ngsi_ld(madrid_station())
    entity["co"]["unitCode"] = "GQ"  # this source reports CO in µg/m³

    aqo = from_ngsi_ld(entity)

    assert aqo.unit_code("co") == "GQ"
    assert to_ngsi_ld(aqo)["co"]["unitCode"] == "GQ"
    assert to_ngsi_ld(aqo)["no2"]["unitCode"] == DEFAULT_UNIT_CODES["no2"]


def test_ngsi_v2_unit_metadata_is_read() -> None:
    aqo = from_ngsi_ld(load_example("AirQualityObserved", "example-normalized.json"))

    assert aqo.unit_code("co") == "GP"
    assert aqo.unit_code("no") == "GQ"


def test_a_kpi_is_observed_when_it_was_calculated() -> None:
    kpi = KeyPerformanceIndicator(
        id="urn:ngsi-ld:KeyPerformanceIndicator:tallinn:no2-annual-mean",
        kpiValue=23.4,
        category=["quantitative"],
        calculationFrequency="hourly",
        updatedAt=datetime(2024, 5, 1, 11, 0, tzinfo=UTC),
    )

    entity = to_ngsi_ld(kpi)

    assert entity["kpiValue"] == {"type": "Property", "value": 23.4, "observedAt": "2024-05-01T11:00:00.000Z"}
    assert entity["updatedAt"]["value"] == {"@type": "DateTime", "@value": "2024-05-01T11:00:00.000Z"}
    assert from_ngsi_ld(entity) == kpi


def test_the_system_modifiedat_of_the_official_kpi_example_is_not_taken_as_data() -> None:
    kpi = from_ngsi_ld(load_example("KeyPerformanceIndicator", "example-normalized.jsonld"))

    assert "modifiedAt" not in to_ngsi_ld(kpi)


def test_times_without_zone_are_utc_and_kept_to_milliseconds() -> None:
    where = {"id": "urn:ngsi-ld:AirQualityObserved:x:1", "location": {"type": "Point", "coordinates": [0, 0]}}
    aqo = AirQualityObserved.model_validate({**where, "dateObserved": "2024-05-01T12:00:00.123456+02:00"})
    naive = AirQualityObserved.model_validate({**where, "dateObserved": "2024-05-01T10:00:00.123"})

    assert to_ngsi_ld(aqo, form="keyValues")["dateObserved"] == "2024-05-01T10:00:00.123Z"
    assert naive.dateObserved == aqo.dateObserved


@pytest.mark.parametrize(
    ("entity_type", "city", "source_id", "expected"),
    [
        ("AirQualityObserved", "madrid", "28079004", "urn:ngsi-ld:AirQualityObserved:madrid:28079004"),
        ("WeatherObserved", "Sønderborg", "DMI 06119", "urn:ngsi-ld:WeatherObserved:Snderborg:DMI-06119"),
        ("AirQualityObserved", "Zürich", "a:b/c?d#e", "urn:ngsi-ld:AirQualityObserved:Zurich:a-b-c-d-e"),
        ("KeyPerformanceIndicator", "tallinn", 42, "urn:ngsi-ld:KeyPerformanceIndicator:tallinn:42"),
    ],
)
def test_entity_ids_are_urns_with_sanitised_parts(
    entity_type: str, city: str, source_id: Any, expected: str
) -> None:
    assert entity_id(entity_type, city, source_id) == expected


@pytest.mark.parametrize(
    ("entity_type", "city", "source_id"),
    [("AirQualityObserved", "", "1"), ("AirQualityObserved", "madrid", "::"), ("Air Quality", "madrid", "1")],
)
def test_entity_ids_refuse_parts_that_sanitise_to_nothing(entity_type: str, city: str, source_id: str) -> None:
    with pytest.raises(ValueError):
        entity_id(entity_type, city, source_id)
