"""Each mapping feature, table-driven: a small source text and the entities a user gets from it."""

from __future__ import annotations

from typing import Any

import pytest

from agents.files import UnmappableRecord, compile_translator, parse_mapping
from agents.files.readers import records_of_text

AQO_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"


def translate(mapping_text: str, data: str) -> list[list[dict[str, Any]]]:
    """Entities per record (blank records left out)."""
    mapping = parse_mapping(mapping_text, "test.yaml")
    translator = compile_translator(mapping)
    out = []
    for record in records_of_text(data, mapping):
        assert record.error is None, record.error
        if not translator.is_blank(record.values):
            out.append(translator(record.values))
    return out


def mapping(source: str, attributes: str, *, timestamp: str = "{column: time}", extra: str = "",
            city: str = "here") -> str:  # fmt: skip
    return f"""
source: {source}
timestamp: {timestamp}
city: {city}
{extra}
entities:
  - type: AirQualityObserved
    id: "{{station}}"
    attributes:
{attributes}
"""


NO2 = "      no2: {column: NO2}"


@pytest.mark.parametrize(
    ("source", "data", "expected_no2"),
    [
        ("{format: csv}", "time,station,NO2\n2024-01-01T00:00:00Z,s1,21.5\n", [21.5]),
        ("{format: csv, delimiter: ';', decimal: ','}", "time;station;NO2\n2024-01-01T00:00:00Z;s1;21,5\n", [21.5]),
        ("{format: csv, delimiter: tab}", "time\tstation\tNO2\n2024-01-01T00:00:00Z\ts1\t7\n", [7.0]),
        ("{format: csv, header: false, columns: [time, station, NO2]}", "2024-01-01T00:00:00Z,s1,3\n", [3.0]),
        ("{format: csv, skip_lines: 2}", "# exported\n# by hand\ntime,station,NO2\n2024-01-01T00:00:00Z,s1,4\n", [4.0]),
        ("{format: csv, encoding: latin-1}", "time,station,NO2\n2024-01-01T00:00:00Z,Lérida,5\n", [5.0]),
        ("{format: csv}", '"time","station","NO2"\r\n"2024-01-01T00:00:00Z","s1","6"\r\n', [6.0]),
        ("{format: ndjson}", '{"time": "2024-01-01T00:00:00Z", "station": "s1", "NO2": 8}\n\n', [8.0]),
        (
            "{format: json, records: 'data.item'}",
            '{"data": [{"time": "2024-01-01T00:00:00Z", "station": "s1", "NO2": 9}]}',
            [9.0],
        ),
        (
            "{format: json, records: item, fields: {time: meta.t, NO2: values.no2}}",
            '[{"meta": {"t": "2024-01-01T00:00:00Z"}, "station": "s1", "values": {"no2": 10}}]',
            [10.0],
        ),
        (
            "{format: xml, records: 'observations/obs', fields: {time: '@at', station: 'where/@id'}}",
            '<observations><obs at="2024-01-01T00:00:00Z"><where id="s1"/><NO2>11.5</NO2></obs></observations>',
            [11.5],
        ),
        (
            "{format: fixed-width, columns: {time: [0, 20], station: [21, 24], NO2: [25, 32]}, skip_lines: 1}",
            "TIME                 STA NO2\n2024-01-01T00:00:00Z s1    12.25\n",
            [12.25],
        ),
    ],
)
def test_every_format_reads_the_same_observation(source: str, data: str, expected_no2: list[float]) -> None:
    [entities] = translate(mapping(source, NO2), data)
    [entity] = entities
    assert entity["no2"] == {"type": "Property", "value": expected_no2[0], "unitCode": "GQ",
                             "observedAt": "2024-01-01T00:00:00.000Z"}  # fmt: skip
    assert entity["dateObserved"]["value"] == {"@type": "DateTime", "@value": "2024-01-01T00:00:00.000Z"}
    assert entity["@context"] == [AQO_CONTEXT]


@pytest.mark.parametrize(
    ("missing", "cell", "kept"),
    [("[NA]", "NA", False), ("[NA]", "", True), ("['']", "", False), ("[-200]", "-200", False),
     ("[-200]", "-200,0", False), ("[-200]", "-20", True), ("[n/a, '']", " n/a ", False)],
)  # fmt: skip
def test_missing_value_markers_leave_the_attribute_out(missing: str, cell: str, kept: bool) -> None:
    source = f"{{format: csv, delimiter: ';', decimal: ',', missing: {missing}}}"
    data = f"time;station;NO2;O3\n2024-01-01T00:00:00Z;s1;{cell};1\n"
    attributes = NO2 + "\n      o3: {column: O3}"
    if kept and cell == "":
        with pytest.raises(UnmappableRecord, match="column 'NO2': '' is not a number"):
            translate(mapping(source, attributes), data)
        return
    [[entity]] = translate(mapping(source, attributes), data)
    assert ("no2" in entity) is kept
    assert entity["o3"]["value"] == 1.0


@pytest.mark.parametrize(
    ("timestamp", "columns", "cells", "expected"),
    [
        (
            "{columns: [y, m, d, h], format: '%Y %m %d %H', time_zone: '+08:00'}",
            "y,m,d,h",
            "2013,3,1,0",
            "2013-02-28T16:00:00.000Z",
        ),
        (
            "{columns: [Date, Time], format: '%d/%m/%Y %H.%M.%S', time_zone: '+01:00'}",
            "Date,Time",
            "10/03/2004,18.00.00",
            "2004-03-10T17:00:00.000Z",
        ),
        ("{column: t, format: '%d %b %Y %H:%M', time_zone: UTC}", "t", "05 Jan 2024 10:30", "2024-01-05T10:30:00.000Z"),
        ("{column: t, time_zone: Europe/Rome}", "t", "2024-07-01T12:00:00", "2024-07-01T10:00:00.000Z"),
        ("{column: t, time_zone: Europe/Rome}", "t", "2024-01-01T12:00:00", "2024-01-01T11:00:00.000Z"),
        ("{column: t, time_zone: Europe/Rome}", "t", "2024-07-01T12:00:00-03:00", "2024-07-01T15:00:00.000Z"),
        ("{column: t, format: epoch}", "t", "1714557600", "2024-05-01T10:00:00.000Z"),
        ("{column: t, format: epoch_ms}", "t", "1714557600123", "2024-05-01T10:00:00.123Z"),
    ],
)
def test_timestamps_from_columns_format_and_time_zone(timestamp: str, columns: str, cells: str,
                                                       expected: str) -> None:  # fmt: skip
    data = f"{columns},station,NO2\n{cells},s1,1\n"
    [[entity]] = translate(mapping("{format: csv}", NO2, timestamp=timestamp), data)
    assert entity["no2"]["observedAt"] == expected


@pytest.mark.parametrize(
    ("spec", "cell", "value", "unit"),
    [
        ("{column: X, unit: GP, scale: 0.001}", "300", 0.3, "GP"),
        ("{column: X, unit: CEL, scale: 0.5555555555555556, offset: -17.77777777777778}", "212", 100.0, "CEL"),
        ("{column: X, expression: '(value - 32) / 1.8', unit: '°C'}", "50", 10.0, "CEL"),
        ("{column: X, expression: 'round(value * k, 1)'}", "2", 3.0, "GQ"),
        ("{column: X, unit: 'µg/m3'}", "5", 5.0, "GQ"),
        ("{column: X, unit: ppb}", "5", 5.0, "61"),
        ("{column: X, kind: integer}", "5.6", 6, "GQ"),
    ],
)
def test_units_and_conversions(spec: str, cell: str, value: float, unit: str) -> None:
    data = f"time,station,X,k\n2024-01-01T00:00:00Z,s1,{cell},1.5\n"
    [[entity]] = translate(mapping("{format: csv}", f"      no2: {spec}"), data)
    assert entity["no2"]["value"] == pytest.approx(value)
    assert entity["no2"]["unitCode"] == unit


@pytest.mark.parametrize(
    ("cell", "degrees"), [("N", 0.0), ("NNE", 22.5), ("E", 90.0), ("sw", 225.0), ("NNW", 337.5), ("cv", None)]
)
def test_compass_points_become_degrees(cell: str, degrees: float | None) -> None:
    data = f"time,station,wd\n2024-01-01T00:00:00Z,s1,{cell}\n"
    attributes = "      windDirection: {column: wd, convert: compass}\n      no2: {column: wd, kind: text}"
    [[entity]] = translate(mapping("{format: csv}", attributes), data)
    if degrees is None:
        assert "windDirection" not in entity
    else:
        assert entity["windDirection"] == {"type": "Property", "value": degrees, "unitCode": "DD",
                                           "observedAt": "2024-01-01T00:00:00.000Z"}  # fmt: skip


def test_one_row_yields_several_entity_types_with_ids_properties_and_relationships() -> None:
    text = """
source: {format: csv, missing: [NA]}
timestamp: {column: time}
city: Beijing Town
locations: {column: station, table: {Dongsi: [116.417, 39.929]}}
entities:
  - type: AirQualityObserved
    id: "{station}"
    properties: {name: "{station} station", dataProvider: MEMC}
    relationships: {refWeatherObserved: {type: WeatherObserved, id: "{station}"}}
    attributes: {pm25: PM2.5}
  - type: WeatherObserved
    id: "{station}"
    attributes: {temperature: {column: TEMP}}
"""
    [[air, weather]] = translate(text, "time,station,PM2.5,TEMP\n2024-01-01T00:00:00Z,Dongsi,80,-1.5\n")
    assert air["id"] == "urn:ngsi-ld:AirQualityObserved:Beijing-Town:Dongsi"
    assert weather["id"] == "urn:ngsi-ld:WeatherObserved:Beijing-Town:Dongsi"
    assert air["refWeatherObserved"] == {"type": "Relationship", "object": weather["id"]}
    assert air["name"] == {"type": "Property", "value": "Dongsi station"}
    assert air["dataProvider"] == {"type": "Property", "value": "MEMC"}
    assert air["pm25"]["unitCode"] == "GQ"
    assert weather["temperature"] == {"type": "Property", "value": -1.5, "unitCode": "CEL",
                                      "observedAt": "2024-01-01T00:00:00.000Z"}  # fmt: skip
    point = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [116.417, 39.929]}}
    assert air["location"] == weather["location"] == point
    assert weather["@context"] == [
        "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld"
    ]
    [[only_air]] = translate(text, "time,station,PM2.5,TEMP\n2024-01-01T00:00:00Z,Dongsi,80,NA\n")
    assert only_air["type"] == "AirQualityObserved"  # an entity without any value is not sent


@pytest.mark.parametrize(
    ("locations", "cells", "coordinates"),
    [
        ("locations: {static: [7.1, 49.2]}", "0,0", [7.1, 49.2]),
        ("locations: {longitude: lon, latitude: lat}", "-9.25,39.09", [-9.25, 39.09]),
    ],
)
def test_static_and_column_locations(locations: str, cells: str, coordinates: list[float]) -> None:
    data = f"time,station,NO2,lon,lat\n2024-01-01T00:00:00Z,s1,1,{cells}\n"
    [[entity]] = translate(mapping("{format: csv}", NO2, extra=locations), data)
    assert entity["location"]["value"]["coordinates"] == coordinates


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("time,station,NO2\n2024-01-01T00:00:00Z,s1,lots\n", "column 'NO2': 'lots' is not a number"),
        ("time,station,NO2\nyesterday,s1,1\n", "'yesterday' is not an ISO 8601 date-time"),
        ("time,station,NO2\n2024-01-01T00:00:00Z,,1\n", "column 'station' is empty"),
        ("time,station,NO2\n2024-01-01T00:00:00Z,Nowhere,1\n", "'Nowhere' is not in locations.table"),
        ("time,station,NO2\n2024-01-01T00:00:00Z,s1,inf\n", "not a finite number"),
    ],
)
def test_a_record_that_cannot_be_mapped_says_why(data: str, reason: str) -> None:
    extra = "locations: {column: station, table: {s1: [1, 2]}}"
    with pytest.raises(UnmappableRecord) as raised:
        translate(mapping("{format: csv}", NO2, extra=extra), data)
    assert reason in str(raised.value)


def test_blank_lines_are_skipped_not_quarantined() -> None:
    source = "{format: csv, delimiter: ';', decimal: ',', missing: ['', -200]}"
    data = "time;station;NO2;;\n2024-01-01T00:00:00Z;s1;1,5;;\n;;;;\n;;;;\n"
    assert len(translate(mapping(source, NO2), data)) == 1


LONG = """
source: {format: csv, missing: ['', NA]}
timestamp: {column: time}
city: mycity
entities:
  - long: {entity: entity, attribute: attribute, value: value, unit: unit}
"""


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("urn:ngsi-ld:AirQualityObserved:c:s1,no2,2024-05-01T10:00:00+02:00,23.5,µg/m3",
         {"no2": {"type": "Property", "value": 23.5, "observedAt": "2024-05-01T08:00:00.000Z", "unitCode": "GQ"}}),
        ("urn:ngsi-ld:WeatherObserved:c:s1,temperature,2024-05-01T10:00:00Z,14.5,°C",
         {"temperature": {"type": "Property", "value": 14.5, "observedAt": "2024-05-01T10:00:00.000Z",
                          "unitCode": "CEL"}}),
        ("urn:ngsi-ld:WeatherObserved:c:s1,weatherType,2024-05-01T10:00:00Z,sunny,",
         {"weatherType": {"type": "Property", "value": "sunny", "observedAt": "2024-05-01T10:00:00.000Z"}}),
        ("urn:ngsi-ld:WeatherObserved:c:s1,location,2024-05-01T10:00:00Z,7.11 49.27,",
         {"location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [7.11, 49.27]}}}),
    ],
)  # fmt: skip
def test_long_format_rows(row: str, expected: dict[str, Any]) -> None:
    [[entity]] = translate(LONG, f"entity,attribute,time,value,unit\n{row}\n")
    assert entity["id"] == row.split(",")[0]
    assert entity["type"] == row.split(":")[2]
    for name, attribute in expected.items():
        assert entity[name] == attribute


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("station-1,no2,2024-05-01T10:00:00Z,1,GQ", "the mapping gives no type"),
        ("urn:ngsi-ld:AirQualityObserved:c:s1,no 2,2024-05-01T10:00:00Z,1,GQ", "is not an attribute name"),
        ("urn:ngsi-ld:AirQualityObserved:c:s1,no2,2024-05-01T10:00:00Z,1,parsecs", "'parsecs' is neither"),
    ],
)
def test_long_format_rows_that_cannot_be_mapped(row: str, reason: str) -> None:
    with pytest.raises(UnmappableRecord, match=reason):
        translate(LONG, f"entity,attribute,time,value,unit\n{row}\n")
