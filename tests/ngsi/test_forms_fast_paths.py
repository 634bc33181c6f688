"""The write path's one-pass expansion and its shortcuts (Points without shapely, cached timestamps) keep the rules."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ngsi.contexts import DEFAULT_VOCAB, ContextStore
from ngsi.errors import BadRequestData
from ngsi.forms import compact_entity, expand_attributes, expand_entity, normalize_entity
from ngsi.timestamps import format_timestamp, normalize_timestamp, parse_timestamp

NOW = "2024-05-01T12:00:00.000Z"
TERMS = ContextStore().term_map_sync(None)


def point(coordinates: Any) -> dict[str, Any]:
    return {"id": "urn:x:1", "type": "T", "location": {"type": "GeoProperty",
                                                        "value": {"type": "Point", "coordinates": coordinates}}}


@pytest.mark.parametrize("coordinates", [[2.35, 48.85], [-180, -90], [180.0, 90.0], [2.35, 48.85, 35.5]])
def test_points_in_range_are_stored_as_sent(coordinates: list[float]) -> None:
    stored = expand_entity(point(coordinates), TERMS, now=NOW)
    assert stored.location == {"type": "Point", "coordinates": coordinates}


@pytest.mark.parametrize("coordinates", [[180.5, 0], [0, -90.01], [math.nan, 1], [math.inf, 1], [True, 1], ["1", 2],
                                         [1], [], [1, 2, 3, 4], [[1, 2]], 5])
def test_points_out_of_range_or_malformed_are_rejected(coordinates: Any) -> None:
    with pytest.raises(BadRequestData) as caught:
        expand_entity(point(coordinates), TERMS, now=NOW)
    assert caught.value.status == 400 and "location" in caught.value.detail


def test_timestamps_are_canonical_whatever_their_offset_and_repeat_cheaply() -> None:
    assert normalize_timestamp("2016-03-15T12:00:00+01:00") == "2016-03-15T11:00:00.000Z"
    assert normalize_timestamp("2016-03-15T11:00:00.123456Z") == "2016-03-15T11:00:00.123Z"
    assert normalize_timestamp("2016-03-15T11:00:00") == "2016-03-15T11:00:00.000Z"
    for _ in range(2):  # a cached success never makes a later failure pass, nor the reverse
        with pytest.raises(ValueError):
            normalize_timestamp("2016-13-15T11:00:00Z")
    assert format_timestamp(parse_timestamp("0999-01-02T03:04:05Z")) == "0999-01-02T03:04:05.000Z"


def test_the_hour_that_repeats_when_clocks_go_back_formats_as_two_instants() -> None:
    # Berlin, 2016-10-30: 02:30 happens twice, at 00:30Z (CEST, fold 0) and 01:30Z (CET, fold 1).
    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2016, 10, 30, 2, 30, tzinfo=berlin)
    second = first.replace(fold=1)
    assert format_timestamp(first) == "2016-10-30T00:30:00.000Z"
    assert format_timestamp(second) == "2016-10-30T01:30:00.000Z"
    assert format_timestamp(first) == "2016-10-30T00:30:00.000Z"  # after the other one was formatted


def test_one_pass_expansion_gives_the_stored_shape_of_sub_attributes_and_multi_attributes() -> None:
    entity = {
        "id": "urn:x:1", "type": "T",
        "temperature": [
            {"type": "Property", "value": 20, "datasetId": "urn:d:1",
             "accuracy": {"type": "Property", "value": 0.5, "observedAt": "2020-01-01T01:00:00+01:00"}},
            {"type": "Property", "value": 21, "providedBy": {"object": "urn:sensor:1"},
             "level": {"vocab": "High"}},
        ],
    }
    stored = expand_entity(entity, TERMS, now=NOW)
    first, second = stored.doc[DEFAULT_VOCAB + "temperature"]
    assert first == {"type": "Property", "value": 20, "datasetId": "urn:d:1",
                     DEFAULT_VOCAB + "accuracy": [{"type": "Property", "value": 0.5,
                                                   "observedAt": "2020-01-01T00:00:00.000Z"}],
                     "createdAt": NOW, "modifiedAt": NOW}
    assert second[DEFAULT_VOCAB + "providedBy"] == [{"type": "Relationship", "object": "urn:sensor:1"}]
    assert second[DEFAULT_VOCAB + "level"] == [{"type": "VocabularyProperty", "vocab": DEFAULT_VOCAB + "High"}]
    back = compact_entity(stored, TERMS)
    assert back["temperature"] == normalize_entity(entity)["temperature"]


def test_a_name_and_its_iri_in_one_payload_are_reported_after_every_attribute_is_checked() -> None:
    with pytest.raises(BadRequestData) as caught:
        expand_attributes({"speed": 1, DEFAULT_VOCAB + "speed": 2, "bad": None}, TERMS, NOW)
    assert "null" in caught.value.detail  # the invalid attribute, not the duplicate, as before
    with pytest.raises(BadRequestData) as caught:
        expand_attributes({"speed": 1, DEFAULT_VOCAB + "speed": 2}, TERMS, NOW)
    assert "same attribute" in caught.value.detail


def test_the_payload_is_not_changed_by_expansion() -> None:
    entity = {"id": "urn:x:1", "type": "T", "p": {"type": "Property", "value": {"a": 1},
                                                  "observedAt": "2020-01-01T00:00:00Z"}}
    expand_entity(entity, TERMS, now=NOW)
    assert entity["p"] == {"type": "Property", "value": {"a": 1}, "observedAt": "2020-01-01T00:00:00Z"}
