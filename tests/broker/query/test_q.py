"""The q query language finds the same entities in PostgreSQL and in Python, as GS CIM 009 4.9 describes."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker.query.params import Param, bound_params
from broker.query.q import And, AttrPath, Comparison, Exists, Or, Scalar, compile_q, matches_q, parse_q
from ngsi.errors import BadRequestData

SDM = "https://smartdatamodels.org/dataModel.Environment/"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
TERMS = {
    "no2": SDM + "no2",
    "pm10": SDM + "pm10",
    "airQualityLevel": SDM + "airQualityLevel",
    "dateObserved": SDM + "dateObserved",
    "refDevice": SDM + "refDevice",
    "location": "https://uri.etsi.org/ngsi-ld/location",
    "name": "https://schema.org/name",
    "address": "https://schema.org/address",
}


def expand(term: str) -> str:
    return TERMS.get(term, term if ":" in term else DEFAULT + term)


def prop(value: Any, **extra: Any) -> list[dict[str, Any]]:
    return [{"type": "Property", "value": value, **extra}]


ENTITIES: dict[str, dict[str, Any]] = {
    "urn:ngsi-ld:AirQualityObserved:Madrid:1": {
        SDM + "no2": prop(45, unitCode="GQ", observedAt="2024-03-15T11:00:00.000Z"),
        SDM + "pm10": prop(12.5, unitCode="GQ", observedAt="2024-03-15T11:00:00.000Z"),
        SDM + "airQualityLevel": prop("moderate"),
        SDM + "dateObserved": prop({"@type": "DateTime", "@value": "2024-03-15T11:00:00Z"}),
        SDM + "refDevice": [{"type": "Relationship", "object": "urn:ngsi-ld:Device:madrid-1"}],
        "https://schema.org/name": prop("Plaza de España"),
        "https://schema.org/address": prop({"addressLocality": "Madrid", "streetAddress": "Plaza 1"}),
    },
    "urn:ngsi-ld:AirQualityObserved:Madrid:2": {
        SDM + "no2": prop(
            38,
            unitCode="GQ",
            observedAt="2024-03-15T12:00:00.000Z",
            **{DEFAULT + "reliability": prop(0.7)},
        ),
        SDM + "airQualityLevel": prop("good"),
        SDM + "dateObserved": prop("2024-03-15T12:00:00+01:00"),
        SDM + "refDevice": [{"type": "Relationship", "object": "urn:ngsi-ld:Device:madrid-2"}],
        "https://schema.org/address": prop({"addressLocality": "Madrid", "postalCode": 28001}),
    },
    "urn:ngsi-ld:AirQualityObserved:Bilbao:1": {
        # A multi-attribute: two instances with datasetIds.
        SDM + "no2": [
            {"type": "Property", "value": 20, "datasetId": "urn:ngsi-ld:Dataset:raw"},
            {"type": "Property", "value": 61, "datasetId": "urn:ngsi-ld:Dataset:calibrated"},
        ],
        SDM + "airQualityLevel": prop(["poor", "veryPoor"]),
        SDM + "dateObserved": prop("2024-03-14"),
        "https://schema.org/name": prop("Mazarredo\nnorth"),
    },
    "urn:ngsi-ld:AirQualityObserved:Bilbao:2": {
        SDM + "no2": prop("n/a"),
        SDM + "pm10": prop(True),
        DEFAULT + "opening": prop("08:30:00"),
        "https://schema.org/name": prop('Say "hi" (and 50% off); ok|go'),
    },
    "urn:ngsi-ld:WeatherObserved:Madrid:1": {
        DEFAULT + "temperature": prop(-3.5, unitCode="CEL"),
        DEFAULT + "tags": [{"type": "ListProperty", "valueList": ["windy", "cold"]}],
        DEFAULT + "readings": [{"type": "ListProperty", "valueList": [3, 7.5]}],
        DEFAULT + "label": [{"type": "LanguageProperty", "languageMap": {"es": "frío", "en": "cold"}}],
    },
}

CASES: list[tuple[str, set[str]]] = [
    # comparisons on numbers, multi-attributes and strings of another type
    ("no2>40", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("no2>=45", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("no2<38", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("no2<=38", {"urn:ngsi-ld:AirQualityObserved:Madrid:2", "urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("no2==45", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ("no2==45.0", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    (
        "no2!=45",
        {
            "urn:ngsi-ld:AirQualityObserved:Madrid:2",
            "urn:ngsi-ld:AirQualityObserved:Bilbao:1",
            "urn:ngsi-ld:AirQualityObserved:Bilbao:2",
        },
    ),
    (
        "no2!=20",
        {
            "urn:ngsi-ld:AirQualityObserved:Madrid:1",
            "urn:ngsi-ld:AirQualityObserved:Madrid:2",
            "urn:ngsi-ld:AirQualityObserved:Bilbao:2",
        },
    ),
    ("temperature<0", {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    ("temperature>-3.5e0", set()),
    # ranges and value lists
    ("no2==30..50", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("no2!=30..50", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1", "urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    ("no2==21..60", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("no2==38,61", {"urn:ngsi-ld:AirQualityObserved:Madrid:2", "urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    (
        'airQualityLevel=="good","moderate"',
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    ('airQualityLevel=="a".."h"', {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    # strings, arrays as values, booleans
    ('airQualityLevel=="poor"', {"urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ('airQualityLevel>"n"', {"urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ('name=="Plaza de España"', {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ('name=="Say \\"hi\\" (and 50% off); ok|go"', {"urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    ('no2=="n/a"', {"urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    ("pm10==true", {"urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    ("pm10==1", set()),
    ("pm10!=true", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    # list and language properties
    ('tags=="cold"', {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    # numbers and booleans are looked for in value and valueList only
    ("readings>7", {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    ("readings==3,4", {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    ("readings<1", set()),
    ("readings!=9", {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    ("pm10==true", {"urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    ('label=="frío"', {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    # one language of a LanguageProperty, or any (as the FIWARE Extended-Properties tutorial queries Orion-LD)
    ('label[en]=="cold"', {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    ('label[es]=="cold"', set()),
    ('label[*]=="frío"', {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    # regular expressions
    (
        "airQualityLevel~=^(good|moder)",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    ("name~=(?i)^plaza", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ("name~=^Plaza;no2>40", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ('name~="north$"', {"urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("name~=Mazarredo.north", set()),
    ("name!~=^Plaza", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1", "urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    # relationships compare their object; URIs are unquoted values
    ("refDevice==urn:ngsi-ld:Device:madrid-2", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ('refDevice=="urn:ngsi-ld:Device:madrid-1"', {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ("refDevice~=madrid", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    # dateTimes compare as instants whatever their offset or form; dates and times as such
    ("dateObserved>2024-03-15T11:30:00Z", set()),
    (
        "dateObserved>=2024-03-15T11:00:00Z",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    (
        "dateObserved==2024-03-15T11:00:00.000Z",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    (
        "dateObserved==2024-03-15T13:00:00+02:00",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    ("dateObserved<2024-03-15", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("opening<09:00:00", {"urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    ("opening==08:00:00..12:00:00", {"urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    # metadata, sub-attributes, compound values
    ("no2.observedAt>2024-03-15T11:30:00Z", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("no2.observedAt==2024-03-15T10:00:00Z..2024-03-15T11:00:00Z", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    # stored timestamps compare as text when the query instant has at most milliseconds, else as instants
    ("no2.observedAt==2024-03-15T13:00:00+01:00", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("no2.observedAt<=2024-03-15T11:00:00.000Z", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ("no2.observedAt>=2024-03-15T11:00:00.001Z", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("no2.observedAt<2024-03-15T11:00:00.0005Z", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    (
        "no2.observedAt>2024-03-15T10:59:59.9995Z",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    (
        "no2.observedAt==2024-03-15T11:00:00Z,2024-03-15T14:00:00+02:00",
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    ("no2.observedAt!=2024-03-15T11:00:00Z", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ('no2.unitCode=="GQ"', {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("no2.datasetId==urn:ngsi-ld:Dataset:calibrated", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("no2.reliability<0.8", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("no2.reliability", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    (
        'address[addressLocality]=="Madrid"',
        {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Madrid:2"},
    ),
    ("address[postalCode]>28000", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("address[streetAddress]", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ('address[postalCode]!="x"', {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    # existence, logic, grouping, full IRIs
    ("pm10", {"urn:ngsi-ld:AirQualityObserved:Madrid:1", "urn:ngsi-ld:AirQualityObserved:Bilbao:2"}),
    ("!pm10;no2", {"urn:ngsi-ld:AirQualityObserved:Madrid:2", "urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    ("no2>40;pm10", {"urn:ngsi-ld:AirQualityObserved:Madrid:1"}),
    ("no2>50|temperature<0", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1", "urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    ("no2<40;(pm10|name)|tags", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1", "urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    ("(no2<40;pm10)|(tags)", {"urn:ngsi-ld:WeatherObserved:Madrid:1"}),
    (f"{SDM}no2>60", {"urn:ngsi-ld:AirQualityObserved:Bilbao:1"}),
    (f"{SDM}no2.observedAt>2024-03-15T11:30:00Z", {"urn:ngsi-ld:AirQualityObserved:Madrid:2"}),
    ("nothing==1", set()),
    ("nothing!=1", set()),
]


@pytest.fixture(scope="module")
def loaded(entities_db: psycopg.Connection) -> psycopg.Connection:
    entities_db.execute("TRUNCATE current_entities")
    with entities_db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO current_entities (id, types, doc, created_at, modified_at) VALUES (%s, %s, %s, now(), now())",
            [(entity_id, ["https://example.org/T"], json.dumps(doc)) for entity_id, doc in ENTITIES.items()],
        )
    return entities_db


def sql_ids(connection: psycopg.Connection, condition: sql.Composable) -> set[str]:
    statement = sql.SQL("SELECT id FROM current_entities WHERE {}").format(condition)
    return {row[0] for row in connection.execute(statement, bound_params(statement)).fetchall()}


@pytest.mark.parametrize(("q", "expected"), CASES, ids=[case[0] for case in CASES])
def test_q_selects_the_same_entities_in_postgresql_and_in_python(
    loaded: psycopg.Connection, q: str, expected: set[str]
) -> None:
    expr = parse_q(q)
    python_ids = {entity_id for entity_id, doc in ENTITIES.items() if matches_q(expr, doc, expand)}
    assert python_ids == expected
    assert sql_ids(loaded, compile_q(expr, expand)) == expected


def test_attribute_names_with_quotes_and_json_path_syntax_cannot_escape_the_path(loaded: psycopg.Connection) -> None:
    hostile = 'x"] ? (true) || $."y'
    expr = parse_q("evil==1")
    statement = compile_q(expr, lambda term: hostile)
    assert sql_ids(loaded, statement) == set()
    assert all(hostile not in piece for piece in statement.as_string(loaded).split("%s"))


def test_values_travel_as_parameters_never_inside_the_sql_text(loaded: psycopg.Connection) -> None:
    statement = compile_q(parse_q('name=="Robert\'); DROP TABLE current_entities; --"'), expand)
    assert "DROP" not in statement.as_string(loaded)
    assert any("DROP" in str(value) for value in bound_params(statement))
    assert sql_ids(loaded, statement) == set()


def test_table_alias_qualifies_the_doc_column(loaded: psycopg.Connection) -> None:
    condition = compile_q(parse_q("no2>60"), expand, table="e")
    statement = sql.SQL("SELECT e.id FROM current_entities AS e WHERE {} AND e.id <> {}").format(
        condition, Param("none")
    )
    rows = loaded.execute(statement, bound_params(statement)).fetchall()
    assert rows == [("urn:ngsi-ld:AirQualityObserved:Bilbao:1",)]


def test_parse_builds_the_documented_tree() -> None:
    assert parse_q("no2>40;(pm10|!name)") == And(
        (
            Comparison(AttrPath("no2"), ">", Scalar("number", 40, "40")),
            Or((Exists(AttrPath("pm10")), Exists(AttrPath("name"), negated=True))),
        )
    )
    assert parse_q("a.b.observedAt").path == AttrPath("a", ("b",), "observedAt")  # type: ignore[union-attr]
    assert parse_q("a.b[c.d]==1").path == AttrPath("a", ("b",), None, ("c", "d"))  # type: ignore[union-attr]


BAD_QUERIES = [
    ("", "empty"),
    ("no2>", "missing value"),
    ("no2>>3", "invalid value"),
    ("no2==abc", "double quotes"),
    ("no2>true", "needs a number"),
    ("no2>1,2", "value list"),
    ("no2>1..2", "range"),
    ('no2==1.."b"', "same kind"),
    ("(no2>1", "missing ')'"),
    ("no2>1)", "unexpected"),
    ("no2>1;", "expected an attribute"),
    ('no2=="abc', "unterminated"),
    ("a[b==1", "missing ']'"),
    ("no2==2024-13-01", "invalid date"),
    ("no2==2024-02-30T10:00:00Z", "invalid dateTime"),
    ("no2~=(?P<x>a)", "named groups"),
    ("no2~=a\\bc", "word boundaries"),
    ("no2~=[", "invalid regular expression"),
    ("|no2", "expected an attribute"),
    ("no2==1e999", "out of range"),
]


@pytest.mark.parametrize(("q", "complaint"), BAD_QUERIES, ids=[bad[0] or "empty" for bad in BAD_QUERIES])
def test_malformed_queries_are_bad_request_data_naming_the_problem(q: str, complaint: str) -> None:
    with pytest.raises(BadRequestData) as raised:
        parse_q(q)
    assert complaint in raised.value.detail
    problem = raised.value.to_problem()
    assert problem["status"] == 400
    assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


def test_errors_report_the_character_position() -> None:
    with pytest.raises(BadRequestData) as raised:
        parse_q("no2>40;pm10==abc")
    assert raised.value.extra["position"] == 13
    assert "position 13" in raised.value.detail
