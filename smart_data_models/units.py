"""Default UN/CEFACT unit codes of Smart Data Models attributes: the one table every producer uses."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

MICROGRAMS_PER_CUBIC_METRE = "GQ"
MILLIGRAMS_PER_CUBIC_METRE = "GP"
DEGREES_CELSIUS = "CEL"
HECTOPASCAL = "HPA"
METRES_PER_SECOND = "MTS"
PERCENT = "P1"
MILLIMETRE = "MMT"
DEGREE_ANGLE = "DD"
LUX = "LUX"
WATTS_PER_SQUARE_METRE = "D54"
CENTIMETRE = "CMT"

DEFAULT_UNIT_CODES: Mapping[str, str] = MappingProxyType(
    {
        # Pollutant concentrations (AirQualityObserved): µg/m³, except carbon monoxide in mg/m³
        # as in the official examples and the EU air quality directive.
        **dict.fromkeys(
            (
                "as", "c6h6", "cd", "co2", "ni", "no", "no2", "nox", "o3", "pb",
                "pm1", "pm10", "pm25", "pm4", "sh2", "so2", "tsp", "volatileOrganicCompoundsTotal",
            ),
            MICROGRAMS_PER_CUBIC_METRE,
        ),
        "co": MILLIGRAMS_PER_CUBIC_METRE,
        # Weather (WeatherObserved and the weather attributes of AirQualityObserved).
        "temperature": DEGREES_CELSIUS,
        "feelsLikeTemperature": DEGREES_CELSIUS,
        "dewPoint": DEGREES_CELSIUS,
        "atmosphericPressure": HECTOPASCAL,
        "pressure": HECTOPASCAL,
        "windSpeed": METRES_PER_SECOND,
        "gustSpeed": METRES_PER_SECOND,
        # ARCHITECTURE.md fixes P1 for humidity, although the schemas carry it as a 0..1 fraction.
        "relativeHumidity": PERCENT,
        # The schemas give precipitation in L/m², which is the same quantity as mm.
        "precipitation": MILLIMETRE,
        "windDirection": DEGREE_ANGLE,
        "illuminance": LUX,
        "solarRadiation": WATTS_PER_SQUARE_METRE,
        "directIrradiation": WATTS_PER_SQUARE_METRE,
        "diffuseIrradiation": WATTS_PER_SQUARE_METRE,
        "snowHeight": CENTIMETRE,
        "streamGauge": CENTIMETRE,
    }
)
"""Attribute name → default UN/CEFACT common code of its unit (what `unitCode` says when not told otherwise)."""


def default_unit_code(attribute: str) -> str | None:
    """The default unit code of an attribute, or None for attributes without a unit."""
    return DEFAULT_UNIT_CODES.get(attribute)
