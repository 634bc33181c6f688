"""TRoE history tables: Orion-LD's value routing, idempotent setup SQL, and the Grafana view."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest

from broker.storage.history import HistoryRows, route_value, write_history
from broker.storage.migrations import migrate, troe_sql

NO2 = "https://smartdatamodels.org/dataModel.Environment/no2"


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        ({"type": "Property", "value": 22}, ("Number", None, None, 22.0, None, None)),
        ({"type": "Property", "value": "good"}, ("String", "good", None, None, None, None)),
        ({"type": "Property", "value": True}, ("Boolean", None, True, None, None, None)),
        ({"type": "Relationship", "object": "urn:ngsi-ld:Device:1"},
         ("Relationship", "urn:ngsi-ld:Device:1", None, None, None, None)),
        ({"type": "Property", "value": {"@type": "DateTime", "@value": "2016-03-15T11:00:00.000Z"}},
         ("DateTime", None, None, None, datetime(2016, 3, 15, 11, 0), None)),
        ({"type": "Property", "value": {"a": 1}}, ("Compound", None, None, None, None, '{"a":1}')),
        ({"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 2]}},
         ("GeoPoint", None, None, None, None, '{"type":"Point","coordinates":[1,2]}')),
        ({"type": "LanguageProperty", "languageMap": {"en": "Park"}},
         ("LanguageMap", None, None, None, None, '{"en":"Park"}')),
        # v1.8 types Orion-LD's ValueType has no member for: kept where a Property's value would go (they
        # were routed nowhere, so their history was lost).
        ({"type": "VocabularyProperty", "vocab": "https://example.org/barn"},
         ("String", "https://example.org/barn", None, None, None, None)),
        ({"type": "ListProperty", "valueList": [1, 2]}, ("Compound", None, None, None, None, "[1,2]")),
        ({"type": "ListRelationship", "objectList": [{"object": "urn:a:b"}]},
         ("Compound", None, None, None, None, '[{"object":"urn:a:b"}]')),
    ],
)  # fmt: skip
def test_values_go_to_the_column_orion_ld_uses(instance: dict, expected: tuple) -> None:
    assert route_value(instance) == expected


async def test_setup_sql_is_idempotent_and_the_grafana_view_shows_values(
    create_database: Callable[[str], str],
) -> None:
    url = create_database("troe")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
        await conn.execute(troe_sql())  # a second run (the FIWARE deployment re-applies it) changes nothing
        rows = HistoryRows()
        at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        entity_type = "https://smartdatamodels.org/AirQualityObserved"
        rows.add_entity("Create", "urn:ngsi-ld:AirQualityObserved:1", [entity_type], at)
        rows.add_attribute("Create", "urn:ngsi-ld:AirQualityObserved:1", NO2, {
            "type": "Property", "value": 41.5, "unitCode": "GQ", "observedAt": "2024-05-01T11:00:00.000Z",
            "https://uri.etsi.org/ngsi-ld/default-context/reliability": [{"type": "Property", "value": 0.7}],
        }, at)  # fmt: skip
        async with conn.transaction():
            await write_history(conn, rows)
        cur = await conn.execute("SELECT entity, type, attribute, time, number_value FROM grafana_attribute_values")
        assert await cur.fetchall() == [(
            "urn:ngsi-ld:AirQualityObserved:1", "https://smartdatamodels.org/AirQualityObserved", NO2,
            datetime(2024, 5, 1, 11, 0), 41.5,
        )]  # fmt: skip
        cur = await conn.execute("SELECT id, number, attrInstanceId LIKE 'urn:ngsi-ld:%' FROM subAttributes")
        assert await cur.fetchall() == [("https://uri.etsi.org/ngsi-ld/default-context/reliability", 0.7, True)]
