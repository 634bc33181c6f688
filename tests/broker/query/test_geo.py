"""Geo-queries: SQL pre-filters never lose a match, shapely decides exactly, near orders by real distance."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker.query.geo import (
    compile_geo_prefilter,
    compile_near_condition,
    compile_point_distance,
    distance,
    geo_bbox_of,
    geo_matches,
    haversine,
    parse_geo_query,
)
from broker.query.params import bound_params
from ngsi.errors import BadRequestData

MADRID_SOL = [-3.7038, 40.4168]
MADRID_RETIRO = [-3.6883, 40.4153]  # ~1.3 km east of Sol
MADRID_BARAJAS = [-3.5676, 40.4983]  # ~14 km
BILBAO = [-2.9350, 43.2630]  # ~320 km
TROMSO = [18.9553, 69.6492]
FIJI_EAST = [179.99, -17.8]
FIJI_WEST = [-179.99, -17.8]

ENTITIES: dict[str, dict[str, Any]] = {
    "urn:ngsi-ld:AirQualityObserved:sol": {"type": "Point", "coordinates": MADRID_SOL},
    "urn:ngsi-ld:AirQualityObserved:retiro": {"type": "Point", "coordinates": MADRID_RETIRO},
    "urn:ngsi-ld:AirQualityObserved:barajas": {"type": "Point", "coordinates": MADRID_BARAJAS},
    "urn:ngsi-ld:AirQualityObserved:bilbao": {"type": "Point", "coordinates": BILBAO},
    "urn:ngsi-ld:AirQualityObserved:tromso": {"type": "Point", "coordinates": TROMSO},
    "urn:ngsi-ld:Station:fiji-east": {"type": "Point", "coordinates": FIJI_EAST},
    "urn:ngsi-ld:Road:gran-via": {"type": "LineString", "coordinates": [[-3.7100, 40.4200], [-3.6950, 40.4190]]},
    "urn:ngsi-ld:Park:retiro": {
        "type": "Polygon",
        "coordinates": [[[-3.692, 40.409], [-3.676, 40.409], [-3.676, 40.421], [-3.692, 40.421], [-3.692, 40.409]]],
    },
}

MADRID_CENTRE_SQUARE = "[[[-3.72,40.40],[-3.68,40.40],[-3.68,40.43],[-3.72,40.43],[-3.72,40.40]]]"

QUERIES: list[tuple[str, str, str, set[str]]] = [
    (
        "near;maxDistance==2000",
        "Point",
        json.dumps(MADRID_SOL),
        {
            "urn:ngsi-ld:AirQualityObserved:sol",
            "urn:ngsi-ld:AirQualityObserved:retiro",
            "urn:ngsi-ld:Road:gran-via",
            "urn:ngsi-ld:Park:retiro",
        },
    ),
    (
        # the park's west edge is 999 m from Sol, Retiro's sensor 1323 m
        "near;maxDistance==1000",
        "Point",
        json.dumps(MADRID_SOL),
        {"urn:ngsi-ld:AirQualityObserved:sol", "urn:ngsi-ld:Road:gran-via", "urn:ngsi-ld:Park:retiro"},
    ),
    (
        "near;maxDistance==998",
        "Point",
        json.dumps(MADRID_SOL),
        {"urn:ngsi-ld:AirQualityObserved:sol", "urn:ngsi-ld:Road:gran-via"},
    ),
    (
        "near;maxDistance==400000",
        "Point",
        json.dumps(MADRID_SOL),
        {
            "urn:ngsi-ld:AirQualityObserved:sol",
            "urn:ngsi-ld:AirQualityObserved:retiro",
            "urn:ngsi-ld:AirQualityObserved:barajas",
            "urn:ngsi-ld:AirQualityObserved:bilbao",
            "urn:ngsi-ld:Road:gran-via",
            "urn:ngsi-ld:Park:retiro",
        },
    ),
    (
        "near;minDistance==300000",
        "Point",
        json.dumps(MADRID_SOL),
        {
            "urn:ngsi-ld:AirQualityObserved:bilbao",
            "urn:ngsi-ld:AirQualityObserved:tromso",
            "urn:ngsi-ld:Station:fiji-east",
        },
    ),
    (
        "near;minDistance==10000;maxDistance==20000",
        "Point",
        json.dumps(MADRID_SOL),
        {"urn:ngsi-ld:AirQualityObserved:barajas"},
    ),
    # across the antimeridian: ~2 km apart on either side of 180°
    ("near;maxDistance==5000", "Point", json.dumps(FIJI_WEST), {"urn:ngsi-ld:Station:fiji-east"}),
    # far north, where a degree of longitude is short
    ("near;maxDistance==50000", "Point", "[19.9, 69.65]", {"urn:ngsi-ld:AirQualityObserved:tromso"}),
    (
        # the park reaches east of the square, so it is not within it
        "within",
        "Polygon",
        MADRID_CENTRE_SQUARE,
        {"urn:ngsi-ld:AirQualityObserved:sol", "urn:ngsi-ld:AirQualityObserved:retiro", "urn:ngsi-ld:Road:gran-via"},
    ),
    ("intersects", "LineString", "[[-3.70,40.41],[-3.67,40.41]]", {"urn:ngsi-ld:Park:retiro"}),
    (
        "contains",
        "Point",
        json.dumps(MADRID_RETIRO),
        {"urn:ngsi-ld:AirQualityObserved:retiro", "urn:ngsi-ld:Park:retiro"},
    ),
    ("equals", "Point", json.dumps(MADRID_SOL), {"urn:ngsi-ld:AirQualityObserved:sol"}),
    (
        "overlaps",
        "Polygon",
        "[[[-3.70,40.40],[-3.68,40.40],[-3.68,40.415],[-3.70,40.415],[-3.70,40.40]]]",
        {"urn:ngsi-ld:Park:retiro"},
    ),
    (
        "disjoint",
        "Polygon",
        MADRID_CENTRE_SQUARE,
        {
            "urn:ngsi-ld:AirQualityObserved:barajas",
            "urn:ngsi-ld:AirQualityObserved:bilbao",
            "urn:ngsi-ld:AirQualityObserved:tromso",
            "urn:ngsi-ld:Station:fiji-east",
        },
    ),
    # Orion-LD also takes a point's coordinates without the brackets, and the geometry in lower case
    (
        "near;maxDistance==1500",
        "point",
        "-3.7038,40.4168",
        {
            "urn:ngsi-ld:AirQualityObserved:sol",
            "urn:ngsi-ld:AirQualityObserved:retiro",
            "urn:ngsi-ld:Road:gran-via",
            "urn:ngsi-ld:Park:retiro",
        },
    ),
]


@pytest.fixture(scope="module")
def loaded(entities_db: psycopg.Connection) -> psycopg.Connection:
    entities_db.execute("TRUNCATE current_entities")
    rows = []
    for entity_id, geojson in ENTITIES.items():
        bbox = geo_bbox_of(geojson)
        assert bbox is not None
        doc = {"https://uri.etsi.org/ngsi-ld/location": [{"type": "GeoProperty", "value": geojson}]}
        rows.append((entity_id, json.dumps(doc), *bbox))
    with entities_db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO current_entities (id, types, doc, created_at, modified_at, geo_bbox)"
            " VALUES (%s, ARRAY['https://example.org/T'], %s, now(), now(), box(point(%s, %s), point(%s, %s)))",
            rows,
        )
    return entities_db


def select_ids(connection: psycopg.Connection, condition: sql.Composable) -> set[str]:
    statement = sql.SQL("SELECT id FROM current_entities WHERE {}").format(condition)
    return {row[0] for row in connection.execute(statement, bound_params(statement)).fetchall()}


@pytest.mark.parametrize(
    ("georel", "geometry", "coordinates", "expected"),
    QUERIES,
    ids=[f"{q[0]}-{q[1]}-{i}" for i, q in enumerate(QUERIES)],
)
def test_geo_queries_find_the_expected_entities_and_the_sql_prefilter_keeps_them(
    loaded: psycopg.Connection, georel: str, geometry: str, coordinates: str, expected: set[str]
) -> None:
    query = parse_geo_query(georel, geometry, coordinates)
    assert {i for i, geojson in ENTITIES.items() if geo_matches(query, geojson)} == expected
    prefilter = compile_geo_prefilter(query)
    if prefilter is not None:
        kept = select_ids(loaded, prefilter)
        assert expected <= kept
        if georel.startswith("near;maxDistance==1000"):
            assert kept < set(ENTITIES), "the box should exclude far entities"
    near = compile_near_condition(query)
    if near is not None:
        # exact for points; shapes pass through for the Python check
        points = {i for i, g in ENTITIES.items() if g["type"] == "Point"}
        assert select_ids(loaded, near) & points == expected & points


def test_near_orders_by_the_same_distance_in_sql_and_python(loaded: psycopg.Connection) -> None:
    query = parse_geo_query("near;maxDistance==400000", "Point", json.dumps(MADRID_SOL))
    condition = compile_near_condition(query)
    order = compile_point_distance(query)
    assert condition is not None and order is not None
    statement = sql.SQL(
        "SELECT id, {} FROM current_entities WHERE {} AND width(geo_bbox) = 0 AND height(geo_bbox) = 0"
        " ORDER BY 2 LIMIT 3"
    ).format(order, condition)
    rows = loaded.execute(statement, bound_params(statement)).fetchall()
    assert [row[0] for row in rows] == [
        "urn:ngsi-ld:AirQualityObserved:sol",
        "urn:ngsi-ld:AirQualityObserved:retiro",
        "urn:ngsi-ld:AirQualityObserved:barajas",
    ]
    for entity_id, metres in rows:
        assert metres == pytest.approx(distance(query, ENTITIES[entity_id]), rel=1e-9, abs=1e-6)


def test_distances_are_metres_on_the_earth() -> None:
    # Madrid Puerta del Sol to Bilbao city centre: about 320 km as the crow flies
    assert haversine(*MADRID_SOL, *BILBAO) == pytest.approx(320_000, rel=0.02)
    # one degree of latitude is ~111.2 km
    assert haversine(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-4)
    query = parse_geo_query("near;maxDistance==10", "Point", json.dumps(MADRID_SOL))
    assert distance(query, ENTITIES["urn:ngsi-ld:Park:retiro"]) == pytest.approx(1000, rel=0.1)
    assert distance(query, ENTITIES["urn:ngsi-ld:AirQualityObserved:sol"]) == 0
    assert distance(query, {"type": "Nonsense"}) is None


def test_geo_queries_on_another_geoproperty_have_no_sql_prefilter() -> None:
    query = parse_geo_query("within", "Polygon", MADRID_CENTRE_SQUARE, "observationSpace")
    assert compile_geo_prefilter(query) is None
    assert query.geoproperty == "observationSpace"


BAD = [
    (("near", "Point", "[1,2]"), "georel", "near needs maxDistance"),
    (("near;maxDistance==-5", "Point", "[1,2]"), "georel", "non-negative"),
    (("near;maxDistance==abc", "Point", "[1,2]"), "georel", "non-negative"),
    (("near;farAway==3", "Point", "[1,2]"), "georel", "expected maxDistance"),
    (("inside", "Point", "[1,2]"), "georel", "unknown relation"),
    (("within;maxDistance==3", "Polygon", MADRID_CENTRE_SQUARE), "georel", "takes no modifiers"),
    (("within", "Circle", "[1,2]"), "geometry", "unknown geometry"),
    (("within", "Point", "[1,2"), "coordinates", "JSON array"),
    (("within", "Point", "[200,2]"), "coordinates", "longitude 200"),
    (("within", "Point", "[2,-91]"), "coordinates", "latitude -91"),
    (("within", "Point", "[[1,2]]"), "coordinates", "position"),
    (("within", "Point", '["1",2]'), "coordinates", "position"),
    (("within", "LineString", "[[1,2]]"), "coordinates", "at least 2"),
    (("within", "Polygon", "[[[0,0],[1,0],[1,1],[0,1]]]"), "coordinates", "not closed"),
    (("within", "Polygon", "[[[0,0],[1,0],[0,0]]]"), "coordinates", "at least 4"),
    (("within", "Polygon", "[[[0,0],[1,1],[1,0],[0,1],[0,0]]]"), "coordinates", "not valid"),
    (("within", None, "[1,2]"), "geometry", "missing: geometry"),
    ((None, "Point", "[1,2]"), "georel", "missing: georel"),
]


@pytest.mark.parametrize(("args", "parameter", "complaint"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_invalid_geo_queries_are_bad_request_data_naming_the_parameter(
    args: tuple[str | None, str | None, str], parameter: str, complaint: str
) -> None:
    with pytest.raises(BadRequestData) as raised:
        parse_geo_query(*args)
    assert complaint in raised.value.detail
    assert raised.value.to_problem()["parameter"] == parameter
