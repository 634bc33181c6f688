"""Mapping files are checked at load: each mistake names the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.files import MappingError, load_mapping, parse_mapping

VALID = """
source: {format: csv}
timestamp: {column: time}
city: here
entities:
  - type: AirQualityObserved
    id: "{station}"
    attributes:
      no2: {column: NO2}
"""


def with_change(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        (with_change("format: csv", "format: parquet"), "source.format", "must be one of"),
        (with_change("{format: csv}", "{format: csv, delimiter: ';;'}"), "source.delimiter", "one character"),
        (with_change("{format: csv}", "{format: csv, decimal: ';'}"), "source.decimal", "must be one of"),
        (with_change("{format: csv}", "{format: csv, delimiter: ',', decimal: ','}"), "source.decimal", "same"),
        (with_change("{format: csv}", "{format: csv, encoding: klingon}"), "source.encoding", "encoding"),
        (with_change("{format: csv}", "{format: csv, missing: [[1]]}"), "source.missing[0]", "text or a number"),
        (with_change("{format: csv}", "{format: json}"), "source.records", "non-empty text"),
        (
            with_change("{format: csv}", "{format: fixed-width, columns: {a: [3, 1]}}"),
            "source.columns.a",
            "start < end",
        ),
        (
            with_change("{format: csv}", "{format: fixed-width, columns: {time: [0, 4]}}"),
            "source.columns",
            "'station' is used by the mapping but not declared",
        ),
        (with_change("{format: csv}", "{format: csv, delimter: ';'}"), "source.delimter", "unknown field"),
        (with_change("{column: time}", "{column: time, time_zone: Mars/Olympus}"), "timestamp.time_zone", "IANA"),
        (with_change("{column: time}", "{column: time, format: yyyy-mm-dd}"), "timestamp.format", "strftime"),
        (with_change("{column: time}", "{columns: []}"), "timestamp.columns", "must list"),
        (with_change("city: here", "city: ''"), "city", "non-empty text"),
        (with_change("type: AirQualityObserved", "type: 'Air Quality'"), "entities[0].type", "plain type name"),
        (with_change("{column: NO2}", "{column: NO2, unit: furlongs}"), "entities[0].attributes.no2.unit", "UN/CEFACT"),
        (
            with_change("{column: NO2}", "{column: NO2, scale: ten}"),
            "entities[0].attributes.no2.scale",
            "must be a number",
        ),
        (
            with_change("{column: NO2}", "{column: NO2, convert: fahrenheit}"),
            "entities[0].attributes.no2.convert",
            "must be one of",
        ),
        (
            with_change("{column: NO2}", "{column: NO2, expression: '__import__(\"os\")'}"),
            "entities[0].attributes.no2.expression",
            "calls something other",
        ),
        (with_change("{column: NO2}", "{}"), "entities[0].attributes.no2", "needs a column"),
        (with_change("no2: {column: NO2}", "id: {column: NO2}"), "entities[0].attributes.id", "not a name"),
        (
            with_change("city: here", "city: here\nlocations: {static: [200, 10]}"),
            "locations.static[0]",
            "outside -180..180",
        ),
        (
            with_change("city: here", "city: here\nlocations: {column: station, table: {}}"),
            "locations.table",
            "at least one",
        ),
        ("entities: []\n", "source", "must be a mapping"),
        (VALID + "  - 3\n", "entities[1]", "must be a mapping"),
        ("source: [unclosed\n", "line", "not valid YAML"),
    ],
)
def test_a_wrong_mapping_names_file_field_and_reason(text: str, field: str, reason: str) -> None:
    with pytest.raises(MappingError) as raised:
        parse_mapping(text, "city.yaml")
    error = raised.value
    assert error.status == 400
    assert error.file == "city.yaml"
    assert error.field.startswith(field), error.detail
    assert reason.lower() in error.reason.lower(), error.detail
    assert error.detail.startswith(f"city.yaml: {error.field}: ")


def test_a_missing_mapping_file_is_a_precise_error(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot be read"):
        load_mapping(tmp_path / "nope.yaml")


def test_a_valid_mapping_lists_the_columns_it_reads() -> None:
    mapping = parse_mapping(VALID.replace("{column: NO2}", "{column: NO2, expression: 'value * k'}"))
    assert mapping.columns() == ["time", "station", "NO2", "k"]


@pytest.mark.parametrize("name", ["beijing_multisite", "beijing_pm25_2010", "uci_air_quality_italy", "oup",
                                  "long_format"])  # fmt: skip
def test_every_shipped_mapping_loads(name: str) -> None:
    mapping = load_mapping(Path("broker_config/mappings") / f"{name}.yaml")
    assert mapping.entities
