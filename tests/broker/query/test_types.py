"""Type expressions, id lists and idPattern select the same entities in PostgreSQL and in Python."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from broker.query.params import bound_params
from broker.query.types import (
    TypeAnd,
    TypeName,
    TypeOr,
    compile_id_pattern,
    compile_ids,
    compile_types,
    matches_id_pattern,
    matches_types,
    parse_id_pattern,
    parse_ids,
    parse_types,
)
from ngsi.errors import BadRequestData

SDM = "https://smartdatamodels.org/dataModel.Environment/"


def expand(term: str) -> str:
    return term if ":" in term else SDM + term


ENTITIES = {
    "urn:ngsi-ld:AirQualityObserved:Madrid:1": [SDM + "AirQualityObserved"],
    "urn:ngsi-ld:AirQualityObserved:Madrid:2": [SDM + "AirQualityObserved", SDM + "Device"],
    "urn:ngsi-ld:WeatherObserved:Bilbao:1": [SDM + "WeatherObserved"],
    "urn:ngsi-ld:Device:Bilbao:7": [SDM + "Device", "https://example.org/types/Sensor"],
    "urn:ngsi-ld:Building:bilbao:7": ["https://example.org/types/Building"],
}

TYPE_CASES = [
    ("AirQualityObserved", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    (
        "AirQualityObserved,WeatherObserved",
        {
            "urn:ngsi-ld:AirQualityObserved:Madrid:1",
            "urn:ngsi-ld:AirQualityObserved:Madrid:2",
            "urn:ngsi-ld:WeatherObserved:Bilbao:1",
        },
    ),
    ("AirQualityObserved;Device", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    (
        "(AirQualityObserved;Device)|WeatherObserved",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:2", "urn:ngsi-ld:WeatherObserved:Bilbao:1"},
    ),
    (
        "Device;(https://example.org/types/Sensor|AirQualityObserved)",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:2", "urn:ngsi-ld:Device:Bilbao:7"},
    ),
    ("https://example.org/types/Building", {"urn:ngsi-ld:Building:bilbao:7"}),
    ("Unknown", set()),
]

ID_PATTERN_CASES = [
    (
        "^urn:ngsi-ld:AirQualityObserved:",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    ("Bilbao:[0-9]+$", {"urn:ngsi-ld:WeatherObserved:Bilbao:1", "urn:ngsi-ld:Device:Bilbao:7"}),
    ("(?i)bilbao:7", {"urn:ngsi-ld:Device:Bilbao:7", "urn:ngsi-ld:Building:bilbao:7"}),
    ("Madrid:\\d", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    (".*", set(ENTITIES)),
]


@pytest.fixture(scope="module")
def loaded(entities_db: psycopg.Connection) -> psycopg.Connection:
    entities_db.execute("TRUNCATE current_entities")
    with entities_db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO current_entities (id, types, doc, created_at, modified_at) VALUES (%s, %s, %s, now(), now())",
            [(entity_id, types, json.dumps({})) for entity_id, types in ENTITIES.items()],
        )
    return entities_db


def sql_ids(connection: psycopg.Connection, condition: sql.Composable) -> set[str]:
    statement = sql.SQL("SELECT id FROM current_entities WHERE {}").format(condition)
    return {row[0] for row in connection.execute(statement, bound_params(statement)).fetchall()}


@pytest.mark.parametrize(("text", "expected"), TYPE_CASES, ids=[case[0] for case in TYPE_CASES])
def test_type_selection_picks_the_same_entities_in_sql_and_python(
    loaded: psycopg.Connection, text: str, expected: set[str]
) -> None:
    expr = parse_types(text)
    assert {i for i, types in ENTITIES.items() if matches_types(expr, types, expand)} == expected
    assert sql_ids(loaded, compile_types(expr, expand)) == expected


def test_type_expressions_parse_with_and_binding_tighter_than_or() -> None:
    assert parse_types("A;B|C,D") == TypeOr((TypeAnd((TypeName("A"), TypeName("B"))), TypeName("C"), TypeName("D")))
    assert parse_types("(A|B);C") == TypeAnd((TypeOr((TypeName("A"), TypeName("B"))), TypeName("C")))


@pytest.mark.parametrize("text", ["", "A;", "(A|B", "A)", "A,,B", ";A", "()"])
def test_malformed_type_selections_are_bad_request_data(text: str) -> None:
    with pytest.raises(BadRequestData) as raised:
        parse_types(text)
    assert raised.value.to_problem()["status"] == 400
    assert "type" in raised.value.detail


@pytest.mark.parametrize(("pattern", "expected"), ID_PATTERN_CASES, ids=[case[0] for case in ID_PATTERN_CASES])
def test_id_pattern_selects_the_same_entities_in_sql_and_python(
    loaded: psycopg.Connection, pattern: str, expected: set[str]
) -> None:
    parsed = parse_id_pattern(pattern)
    assert {i for i in ENTITIES if matches_id_pattern(parsed, i)} == expected
    assert sql_ids(loaded, compile_id_pattern(parsed)) == expected


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("[a-", "invalid regular expression"),
        ("(?P<city>Madrid)", "named groups"),
        ("(?<city>Madrid)", "regular expression"),
        ("\\bMadrid", "word boundaries"),
        ("a*+", "possessive"),
        ("(?>a)", "atomic"),
        ("[[:digit:]]", "POSIX bracket"),
        ("a(?s:.)", "inline flags"),
        ("", "empty"),
    ],
)
def test_id_patterns_postgresql_would_read_differently_are_rejected(pattern: str, complaint: str) -> None:
    with pytest.raises(BadRequestData) as raised:
        parse_id_pattern(pattern)
    assert complaint in raised.value.detail
    assert "idPattern" in raised.value.detail


def test_id_lists_select_exactly_those_entities(loaded: psycopg.Connection) -> None:
    ids = parse_ids("urn:ngsi-ld:Device:Bilbao:7, urn:ngsi-ld:Building:bilbao:7,urn:ngsi-ld:Nope:1")
    assert sql_ids(loaded, compile_ids(ids)) == {"urn:ngsi-ld:Device:Bilbao:7", "urn:ngsi-ld:Building:bilbao:7"}


@pytest.mark.parametrize("text", ["", "urn:a:b,", "not a uri", "urn:a:b,plain"])
def test_id_lists_with_non_uris_are_bad_request_data(text: str) -> None:
    with pytest.raises(BadRequestData) as raised:
        parse_ids(text)
    assert "is not a URI" in raised.value.detail


def test_type_selection_uses_the_gin_index(loaded: psycopg.Connection) -> None:
    statement = sql.SQL("EXPLAIN SELECT id FROM current_entities WHERE {}").format(
        compile_types(parse_types("AirQualityObserved,WeatherObserved"), expand)
    )
    loaded.execute("SET enable_seqscan = off")
    try:
        plan = "\n".join(row[0] for row in loaded.execute(statement, bound_params(statement)).fetchall())
    finally:
        loaded.execute("RESET enable_seqscan")
    assert "current_entities_types_index" in plan
