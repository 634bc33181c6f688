"""KPI definitions: the shipped ones load; a broken one is refused naming its file, entry, field and reason."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from cli.main import app
from kpi.calc import CalcInputError, calculate_from_input
from kpi.calculators import eea_air_quality_index
from kpi.definitions import InvalidDefinition, load_definitions
from kpi.entities import calculate_kpi, kpi_entity_id
from kpi.windows import window_at
from smart_data_models import KeyPerformanceIndicator, from_ngsi_ld

VALID = """
city: testville
organization: Test City
timezone: Europe/Madrid
kpis:
  - id: no2-p98
    name: NO2 98th percentile
    source: {type: AirQualityObserved, attributes: [no2]}
    calculator: percentile
    parameters: {attribute: no2, q: 98}
    window: month
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kpis.yaml"
    path.write_text(text)
    return path


def test_shipped_definitions_cover_air_quality_for_every_station_and_city_kpis() -> None:
    definitions = load_definitions()
    ids = {d.id for d in definitions}
    assert {"eea-air-quality-index", "caqi", "us-aqi", "eu-pm10-daily-exceedances", "who-pm25-daily-exceedances",
            "pm25-annual-mean", "renewable-energy-share", "recycling-rate", "traffic-volume"} <= ids
    for definition in definitions.for_source("AirQualityObserved"):
        assert definition.source.stations.matches("urn:ngsi-ld:AirQualityObserved:beijing:Dongsi")
        assert not definition.source.stations.matches("urn:ngsi-ld:AirQualityObserved:madrid:1")


def test_a_valid_file_loads_with_file_defaults(tmp_path: Path) -> None:
    (definition,) = load_definitions(write(tmp_path, VALID))
    assert (definition.city, definition.timezone, definition.frequency) == ("testville", "Europe/Madrid", "monthly")


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (("window: month", "window: weekly"), "window.kind", "'hour'"),
        (("q: 98", "q: 98, quantile: 3"), "parameters of percentile", "quantile"),
        (("q: 98", "q: 120"), "parameters of percentile", "q"),
        (("attributes: [no2]", "attributes: [pm25]"), "source.attributes lacks ['no2']", "percentile"),
        (("calculator: percentile", "calculator: median"), "calculator", "unknown calculator 'median'"),
        (("id: no2-p98", "id: NO2 P98"), "id", "lower-case"),
        (("timezone: Europe/Madrid", "timezone: Mars/Olympus"), "timezone", "Mars/Olympus"),
        (("window: month", "window: {kind: custom, start: 2019-01-01}"), "window", "needs `start` and `end`"),
    ],
)
def test_a_broken_definition_is_refused_with_file_field_and_reason(
    tmp_path: Path, change: tuple[str, str], field: str, reason: str
) -> None:
    path = write(tmp_path, VALID.replace(*change))
    with pytest.raises(InvalidDefinition) as raised:
        load_definitions(path)
    message = str(raised.value)
    assert str(path) in message
    assert "kpis[0]" in message
    assert field in message
    assert reason in message


def test_kpi_list_exits_2_on_a_broken_definition(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("window: month", "window: weekly"))
    result = CliRunner().invoke(app, ["kpi", "list", "--definitions", str(path)])
    assert result.exit_code == 2


def test_kpi_entity_follows_the_smart_data_model() -> None:
    definition = load_definitions().get("eea-air-quality-index")
    moment = datetime(2016, 3, 15, 11, tzinfo=ZoneInfo("Asia/Shanghai"))
    window = window_at("hour", moment, definition.tz)
    source = "urn:ngsi-ld:AirQualityObserved:beijing:Dongsi"
    kpi = calculate_kpi(definition, source, {"pm25": [(moment, 12.0)], "no2": [(moment, 70.0)]}, window)
    assert kpi.id == kpi_entity_id(definition, source, window)
    assert kpi.id == "urn:ngsi-ld:KeyPerformanceIndicator:beijing:eea-air-quality-index:Dongsi:hourly"
    model = from_ngsi_ld(kpi.entity)  # validated against the official schema
    assert isinstance(model, KeyPerformanceIndicator)
    assert model.kpiValue == eea_air_quality_index({"pm25": 12, "no2": 70}).level  # type: ignore[union-attr]
    assert model.currentStanding == "bad"


def test_kpi_calc_prints_the_calculator_result_as_json(tmp_path: Path) -> None:
    start = datetime(2016, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
    hours = [[(start + timedelta(hours=h)).isoformat(), 250.0 if h < 20 else 100.0] for h in range(48)]
    document = {"parameters": {"standard": "eu-2008-50", "pollutant": "no2", "averaging": "hour"},
                "timezone": "Asia/Shanghai", "series": {"no2": hours}}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(document))
    result = CliRunner().invoke(app, ["kpi", "calc", "limit_exceedances", "--input", str(path)])
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    assert output["value"] == 20
    assert output["coverage"]["sufficient"] is False
    assert output["details"]["compliant"] is False  # 20 hours > 18 allowed, whatever the coverage


def test_kpi_calc_takes_plain_numbers_as_consecutive_hours() -> None:
    output = calculate_from_input("us_aqi", {"series": {"pm25": [35.4] * 12}})
    assert output["value"] == 100  # NowCast of a constant 35.4 is 35.4, the top of "Moderate" (TAD 2024)


def test_kpi_calc_names_what_is_wrong_with_the_input() -> None:
    with pytest.raises(CalcInputError, match=r"series\.pm25\[0\]"):
        calculate_from_input("eea_index", {"series": {"pm25": [["yesterday", 3]]}})
    with pytest.raises(CalcInputError, match="unknown calculator"):
        calculate_from_input("nope", {"series": {"pm25": [1]}})
