"""The worked example of broker_config/mappings/README.md does what the README says."""

from __future__ import annotations

import re
from pathlib import Path

from agents.files import compile_translator, parse_mapping
from agents.files.readers import records_of_text

README = Path(__file__).resolve().parents[3] / "broker_config" / "mappings" / "README.md"


def test_the_readme_worked_example_maps_as_described() -> None:
    text = README.read_text(encoding="utf-8")
    data = re.search(r"```\n(Datum;.*?)```", text, re.S)
    yaml_text = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert data and yaml_text
    mapping = parse_mapping(yaml_text.group(1), "README.md")
    translate = compile_translator(mapping)
    first, second = (translate(record.values) for record in records_of_text(data.group(1), mapping))
    air, weather = first
    assert air["id"] == "urn:ngsi-ld:AirQualityObserved:mycity:Centro"
    assert air["no2"] == {"type": "Property", "value": 23.5, "unitCode": "GQ", "observedAt": "2024-05-01T08:00:00.000Z"}
    assert weather["windDirection"]["value"] == 225.0
    assert [entity["type"] for entity in second] == ["WeatherObserved"]
    assert "windDirection" not in second[0]
