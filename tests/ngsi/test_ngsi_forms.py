"""Payload forms on real Smart Data Models examples: normalize, validate, expand, compact, GeoJSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ngsi.contexts import DEFAULT_VOCAB, ContextStore, TermMap
from ngsi.errors import BadRequestData
from ngsi.forms import (
    LOCATION_IRI,
    compact_entity,
    expand_attributes,
    expand_entity,
    normalize_entity,
    to_concise,
    to_geojson_feature,
    to_key_values,
    validate_entity_payload,
)
from ngsi.timestamps import normalize_timestamp, utc_now_iso

FIXTURES = Path(__file__).parent / "fixtures"
NOW = "2024-05-01T12:00:00.000Z"
ENV = "https://smartdatamodels.org/dataModel.Environment/"
NGSI = "https://uri.etsi.org/ngsi-ld/"
STORE = ContextStore()


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return document


def terms_for(entity: dict[str, Any]) -> TermMap:
    return STORE.term_map_sync(entity.get("@context"))


SDM_PAIRS = [
    ("AirQualityObserved.example.jsonld", "AirQualityObserved.example-normalized.jsonld"),
    ("WeatherObserved.example.jsonld", "WeatherObserved.example-normalized.jsonld"),
    ("KeyPerformanceIndicator.example.jsonld", "KeyPerformanceIndicator.example-normalized.jsonld"),
]


@pytest.mark.parametrize(("key_values", "normalized"), SDM_PAIRS)
def test_key_values_example_normalizes_like_the_official_normalized_one(key_values: str, normalized: str) -> None:
    simple, full = fixture(key_values), fixture(normalized)
    ours = normalize_entity(simple)
    for name, attribute in full.items():
        if name in ("id", "type", "@context") or name not in ours:
            continue
        if attribute.get("type") == "Relationship":
            continue  # the keyValues examples shorten relationship targets to plain ids
        # (the official pairs disagree on some values, e.g. windDirection; the attribute types agree)
        assert ours[name]["type"] == attribute["type"], name


@pytest.mark.parametrize("name", [normalized for _, normalized in SDM_PAIRS])
def test_normalized_examples_survive_expand_and_compact(name: str) -> None:
    entity = fixture(name)
    terms = terms_for(entity)
    stored = expand_entity(entity, terms, now=NOW)
    back = compact_entity(stored, terms)
    expected = {k: v for k, v in normalize_entity(entity).items() if k != "@context"}
    assert back == expected
    # the keyValues example of the same model comes out of the same stored entity
    if "location" in entity:
        assert compact_entity(stored, terms, form="keyValues")["location"] == entity["location"]["value"]


def test_air_quality_expands_to_smart_data_models_iris_and_core_location() -> None:
    entity = fixture("AirQualityObserved.example-normalized.jsonld")
    stored = expand_entity(entity, terms_for(entity), now=NOW)
    assert stored.id == entity["id"]
    assert stored.types == [ENV + "AirQualityObserved"]
    assert stored.doc[ENV + "no2"] == [
        {"type": "Property", "value": 69, "unitCode": "GQ", "createdAt": NOW, "modifiedAt": NOW}
    ]
    assert stored.doc[LOCATION_IRI][0]["type"] == "GeoProperty"
    assert stored.location == entity["location"]["value"]


def test_the_same_entity_without_its_context_lands_in_the_default_vocabulary() -> None:
    entity = fixture("AirQualityObserved.example-normalized.jsonld")
    del entity["@context"]
    stored = expand_entity(entity, STORE.term_map_sync(None), now=NOW)
    assert stored.types == [DEFAULT_VOCAB + "AirQualityObserved"]
    assert DEFAULT_VOCAB + "no2" in stored.doc
    assert LOCATION_IRI in stored.doc


def test_compaction_with_another_context_uses_full_iris_or_that_contexts_terms() -> None:
    entity = fixture("AirQualityObserved.example-normalized.jsonld")
    stored = expand_entity(entity, terms_for(entity), now=NOW)
    core_only = compact_entity(stored, STORE.term_map_sync(None), form="keyValues")
    assert core_only["type"] == ENV + "AirQualityObserved"
    assert core_only[ENV + "no2"] == 69
    assert core_only["location"]["type"] == "Point"


@pytest.mark.parametrize(
    ("concise", "normalized"),
    [
        (12.5, {"type": "Property", "value": 12.5}),
        ("text", {"type": "Property", "value": "text"}),
        ([1, 2], {"type": "Property", "value": [1, 2]}),
        ({"addressLocality": "Madrid"}, {"type": "Property", "value": {"addressLocality": "Madrid"}}),
        ({"value": 3, "unitCode": "CEL"}, {"type": "Property", "value": 3, "unitCode": "CEL"}),
        ({"object": "urn:ngsi-ld:Device:1"}, {"type": "Relationship", "object": "urn:ngsi-ld:Device:1"}),
        ({"objectList": [{"object": "urn:a:1"}]}, {"type": "ListRelationship", "objectList": [{"object": "urn:a:1"}]}),
        ({"valueList": [1, 2]}, {"type": "ListProperty", "valueList": [1, 2]}),
        ({"languageMap": {"en": "Hi", "es": "Hola"}},
         {"type": "LanguageProperty", "languageMap": {"en": "Hi", "es": "Hola"}}),
        ({"vocab": "Good"}, {"type": "VocabularyProperty", "vocab": "Good"}),
        ({"json": {"a": None}}, {"type": "JsonProperty", "json": {"a": None}}),
        ({"type": "Point", "coordinates": [2.1, 41.4]},
         {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.1, 41.4]}}),
        ({"value": 1, "reliability": 0.9, "source": {"object": "urn:x:1"}},
         {"type": "Property", "value": 1, "reliability": {"type": "Property", "value": 0.9},
          "source": {"type": "Relationship", "object": "urn:x:1"}}),
        ([{"value": 1, "datasetId": "urn:ds:a"}, {"value": 2}],
         [{"type": "Property", "value": 1, "datasetId": "urn:ds:a"}, {"type": "Property", "value": 2}]),
        ({"value": 1, "observedAt": "2016-03-15T11:00:00Z"},
         {"type": "Property", "value": 1, "observedAt": "2016-03-15T11:00:00.000Z"}),
    ],
)
def test_concise_attributes_normalize_per_spec(concise: Any, normalized: Any) -> None:
    entity = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing", "attr": concise}
    assert normalize_entity(entity)["attr"] == normalized
    # and back: concise → normalized → concise → normalized is stable
    assert normalize_entity(to_concise(normalize_entity(entity)))["attr"] == normalized


def test_key_values_of_every_attribute_type() -> None:
    entity = {
        "id": "urn:ngsi-ld:Thing:1",
        "type": "Thing",
        "p": {"value": 1, "unitCode": "CEL"},
        "r": {"object": "urn:ngsi-ld:Device:1"},
        "g": {"type": "Point", "coordinates": [2.1, 41.4]},
        "l": {"languageMap": {"en": "Hi"}},
        "v": {"vocab": "Good"},
        "j": {"json": {"a": 1}},
    }
    simplified = to_key_values(entity)
    # A LanguageProperty, VocabularyProperty and JsonProperty keep their member (as the FIWARE tutorials
    # show), so that the simplified entity reads back as the same types, not as Properties with object values.
    assert simplified == {
        "id": "urn:ngsi-ld:Thing:1",
        "type": "Thing",
        "p": 1,
        "r": "urn:ngsi-ld:Device:1",
        "g": {"type": "Point", "coordinates": [2.1, 41.4]},
        "l": {"languageMap": {"en": "Hi"}},
        "v": {"vocab": "Good"},
        "j": {"json": {"a": 1}},
    }
    assert {name: attribute["type"] for name, attribute in normalize_entity(simplified).items()
            if name in "lvj"} == {"l": "LanguageProperty", "v": "VocabularyProperty", "j": "JsonProperty"}


def test_concise_output_drops_redundant_types() -> None:
    entity = fixture("AirQualityObserved.example-normalized.jsonld")
    terms = terms_for(entity)
    concise = compact_entity(expand_entity(entity, terms, now=NOW), terms, form="concise")
    assert concise["no2"] == {"value": 69, "unitCode": "GQ"}
    assert concise["airQualityIndex"] == 65
    assert concise["refPointOfInterest"] == {"object": entity["refPointOfInterest"]["object"]}
    assert concise["location"] == entity["location"]["value"]


def test_sys_attrs_add_timestamps_at_entity_and_attribute_level() -> None:
    entity = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing", "p": 1}
    terms = STORE.term_map_sync(None)
    stored = expand_entity(entity, terms, now=NOW)
    row = {"id": stored.id, "types": stored.types, "doc": stored.doc, "createdAt": NOW, "modifiedAt": NOW}
    with_sys = compact_entity(row, terms, sys_attrs=True)
    assert with_sys["createdAt"] == NOW and with_sys["modifiedAt"] == NOW
    assert with_sys["p"]["createdAt"] == NOW
    without = compact_entity(row, terms)
    assert "createdAt" not in without and "createdAt" not in without["p"]


def test_attrs_pick_and_omit_select_members() -> None:
    entity = fixture("AirQualityObserved.example-normalized.jsonld")
    terms = terms_for(entity)
    stored = expand_entity(entity, terms, now=NOW)
    assert set(compact_entity(stored, terms, attrs=["no2", "so2"])) == {"id", "type", "no2", "so2"}
    assert set(compact_entity(stored, terms, pick=["id", "no2"])) == {"id", "no2"}
    omitted = compact_entity(stored, terms, omit=["type", "no2"])
    assert "type" not in omitted and "no2" not in omitted and "so2" in omitted


def test_lang_turns_a_language_property_into_a_property() -> None:
    entity = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing",
              "name": {"languageMap": {"en": "Square", "es": "Plaza", "@none": "Plaza"}}}
    terms = STORE.term_map_sync(None)
    stored = expand_entity(entity, terms, now=NOW)
    assert compact_entity(stored, terms, lang="es")["name"] == {"type": "Property", "value": "Plaza", "lang": "es"}
    assert compact_entity(stored, terms, lang="fr,en;q=0.5")["name"]["value"] == "Square"
    assert compact_entity(stored, terms, lang="en", form="keyValues")["name"] == "Square"
    assert compact_entity(stored, terms)["name"]["languageMap"]["es"] == "Plaza"


def test_vocab_values_are_stored_expanded_and_compacted_back() -> None:
    terms = STORE.term_map_sync({"Good": "https://example.org/levels#Good"})
    stored = expand_entity({"id": "urn:x:1", "type": "T", "level": {"vocab": "Good"}}, terms, now=NOW)
    assert stored.doc[DEFAULT_VOCAB + "level"][0]["vocab"] == "https://example.org/levels#Good"
    assert compact_entity(stored, terms, form="keyValues")["level"] == {"vocab": "Good"}


def test_multi_attribute_instances_come_back_as_an_array() -> None:
    terms = STORE.term_map_sync(None)
    entity = {"id": "urn:x:1", "type": "T",
              "speed": [{"type": "Property", "value": 1, "datasetId": "urn:ds:gps"},
                        {"type": "Property", "value": 2}]}
    stored = expand_entity(entity, terms, now=NOW)
    assert [i["value"] for i in compact_entity(stored, terms)["speed"]] == [1, 2]
    assert compact_entity(stored, terms, form="keyValues")["speed"] == 2
    assert compact_entity(stored, terms, dataset_id="urn:ds:gps")["speed"]["value"] == 1


def test_expand_attributes_for_attribute_endpoints() -> None:
    doc = expand_attributes({"@context": "ignored-here", "no2": {"value": 40, "unitCode": "GQ"}},
                            STORE.term_map_sync(None), NOW)
    assert doc == {DEFAULT_VOCAB + "no2": [{"type": "Property", "value": 40, "unitCode": "GQ",
                                             "createdAt": NOW, "modifiedAt": NOW}]}


def test_geojson_feature_of_an_entity() -> None:
    entity = fixture("AirQualityObserved.example-normalized.jsonld")
    terms = terms_for(entity)
    stored = expand_entity(entity, terms, now=NOW)
    for form in ("normalized", "concise", "keyValues"):
        feature = to_geojson_feature(compact_entity(stored, terms, form=form))
        assert feature["type"] == "Feature"
        assert feature["id"] == entity["id"]
        assert feature["geometry"] == entity["location"]["value"]
        assert feature["properties"]["type"] == "AirQualityObserved"
    no_geo = to_geojson_feature({"id": "urn:x:1", "type": "T"})
    assert no_geo["geometry"] is None


def test_forms_do_not_modify_their_input() -> None:
    entity = fixture("WeatherObserved.example-normalized.jsonld")
    before = copy.deepcopy(entity)
    expand_entity(entity, terms_for(entity), now=NOW)
    to_concise(normalize_entity(entity))
    assert entity == before


GOOD = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing"}


@pytest.mark.parametrize(
    ("entity", "complaint"),
    [
        ({"type": "Thing"}, "no 'id'"),
        ({"id": "Madrid-AmbientObserved-28079004", "type": "Thing"}, "not a URI"),
        ({"id": "urn:ngsi-ld:Thing:1"}, "no 'type'"),
        ({**GOOD, "type": []}, "empty"),
        ({**GOOD, "p": None}, "null"),
        ({**GOOD, "p": {"type": "Property"}}, "non-null 'value'"),
        ({**GOOD, "p": {"type": "Property", "value": None}}, "non-null 'value'"),
        ({**GOOD, "r": {"type": "Relationship", "object": "not a uri"}}, "URI"),
        ({**GOOD, "r": {"type": "Relationship"}}, "'object'"),
        ({**GOOD, "g": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [200, 10]}}}, "range"),
        ({**GOOD, "g": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 95]}}}, "range"),
        ({**GOOD, "g": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": "x"}}}, "GeoJSON"),
        ({**GOOD, "g": {"type": "GeoProperty", "value": "POINT(1 2)"}}, "GeoJSON"),
        ({**GOOD, "g": {"type": "GeoProperty",
                        "value": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}}}, "closed"),
        ({**GOOD, "p": {"value": 1, "observedAt": "yesterday"}}, "observedAt"),
        ({**GOOD, "p": {"value": 1, "datasetId": "no uri"}}, "datasetId"),
        ({**GOOD, "p": {"type": "Number", "value": 1}}, "unknown attribute type"),
        ({**GOOD, "observedAt": "2020-01-01T00:00:00Z"}, "reserved"),
        ({**GOOD, "value": 3}, "reserved"),
        ({**GOOD, "bad name": 3}, "forbidden"),
        ({**GOOD, "bad(name)": 3}, "forbidden"),
        ({**GOOD, "p": {"value": 1, "unitCode": 5}}, "unitCode"),
        ({**GOOD, "l": {"languageMap": {"en": 5}}}, "languageMap"),
        ({**GOOD, "j": {"json": 5}}, "JsonProperty"),
        ({**GOOD, "lp": {"valueList": 5}}, "valueList"),
        ({**GOOD, "p": [{"value": 1}, {"value": 2}]}, "datasetId"),
        ({**GOOD, "scope": "no-slash"}, "scope"),
        ({**GOOD, "p": {"value": 1, "sub": {"value": None}}}, "p.sub"),
    ],
)
def test_bad_entities_are_rejected_naming_the_problem(entity: dict[str, Any], complaint: str) -> None:
    with pytest.raises(BadRequestData) as raised:
        validate_entity_payload(entity)
    assert complaint in raised.value.detail
    assert raised.value.status == 400


def test_ngsi_v2_examples_are_not_mistaken_for_ngsi_ld() -> None:
    with pytest.raises(BadRequestData):
        validate_entity_payload(fixture("KeyPerformanceIndicator.example-normalized.json"))


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert normalize_timestamp("2020-01-01T10:00:00+02:00") == "2020-01-01T08:00:00.000Z"
    assert utc_now_iso().endswith("Z") and len(utc_now_iso()) == len("2020-01-01T08:00:00.000Z")


def test_payload_system_timestamps_are_ignored_not_stored() -> None:
    entity = {"id": "urn:ngsi-ld:T:sys", "type": "T", "createdAt": "2020-01-01T00:00:00Z",
              "modifiedAt": {"type": "Property", "value": "2020-01-01T00:00:00Z"}, "p": 1}
    normalized = normalize_entity(entity)
    assert "createdAt" not in normalized and "modifiedAt" not in normalized
    assert normalized["p"] == {"type": "Property", "value": 1}


@pytest.mark.parametrize(
    ("entity", "field", "limit"),
    [
        ({"id": "urn:ngsi-ld:T:" + "é" * 600, "type": "T"}, "entity id", 1024),  # 1,200+ bytes in UTF-8
        ({"id": "urn:ngsi-ld:T:1", "type": "T" * 1100}, "entity type", 1024),
        ({"id": "urn:ngsi-ld:T:1", "type": "T", "a" * 1100: 1}, "attribute name", 1024),
        ({"id": "urn:ngsi-ld:T:1", "type": "T",
          "a": {"type": "Property", "value": 1, "datasetId": "urn:d:" + "d" * 1100}}, "datasetId", 1024),
        ({"id": "urn:ngsi-ld:T:1", "type": "T",
          "a": {"type": "Property", "value": 1, "instanceId": "urn:i:" + "i" * 2100}}, "instanceId", 2048),
        ({"id": "urn:ngsi-ld:T:1", "type": "T",
          "a": {"type": "Property", "value": 1,
                "b": {"type": "Property", "value": 2, "instanceId": "urn:i:" + "i" * 2100}}}, "instanceId", 2048),
    ],
)
def test_ids_and_names_too_long_to_store_are_refused_naming_the_field_and_limit(
    entity: dict[str, Any], field: str, limit: int
) -> None:
    with pytest.raises(BadRequestData) as refused:
        expand_entity(entity, terms_for({}), now="2026-01-01T00:00:00.000Z")
    assert field in refused.value.detail and f"at most {limit} bytes" in refused.value.detail


def test_ids_at_the_limit_and_string_instance_ids_only() -> None:
    entity = {"id": "urn:ngsi-ld:T:" + "x" * (1024 - 14), "type": "T",
              "a": {"type": "Property", "value": 1, "instanceId": "urn:i:" + "i" * (2048 - 6)}}
    assert expand_entity(entity, terms_for({}), now="2026-01-01T00:00:00.000Z").id == entity["id"]
    with pytest.raises(BadRequestData, match="instanceId must be a non-empty string"):
        expand_entity({"id": "urn:ngsi-ld:T:1", "type": "T", "a": {"type": "Property", "value": 1, "instanceId": 7}},
                      terms_for({}), now="2026-01-01T00:00:00.000Z")


def test_the_v1_8_name_vocab_property_is_taken_as_vocabulary_property() -> None:
    # The v1.8 core context calls it VocabProperty, v1.7 and Orion-LD VocabularyProperty: both were
    # needed by clients, only the second was taken (the first was an unknown attribute type, 400).
    terms = STORE.term_map_sync(None)
    for kind in ("VocabProperty", "VocabularyProperty"):
        stored = expand_entity({"id": "urn:x:1", "type": "T", "level": {"type": kind, "vocab": "Good"}}, terms, now=NOW)
        assert stored.doc[DEFAULT_VOCAB + "level"][0]["type"] == "VocabularyProperty"
