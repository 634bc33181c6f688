"""Pydantic models of the Smart Data Models we use, each checked against its official JSON schema."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    model_validator,
)
from pydantic_core import to_jsonable_python

from smart_data_models.units import default_unit_code
from smart_data_models.validation import official_validator

ENVIRONMENT_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld"
WEATHER_CONTEXT = "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld"
KPI_CONTEXT = (
    "https://raw.githubusercontent.com/smart-data-models/dataModel.KeyPerformanceIndicator/master/context.jsonld"
)


def _as_utc_millis(value: datetime) -> datetime:
    # NGSI-LD timestamps are UTC with milliseconds; a time without a zone (as in the official
    # AirQualityObserved examples) is read as UTC.
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def format_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, as NGSI-LD brokers write timestamps."""
    value = _as_utc_millis(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


UtcDateTime = Annotated[
    datetime,
    AfterValidator(_as_utc_millis),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]
"""A timestamp normalised to UTC with millisecond precision."""


class SmartDataModel(BaseModel):
    """Attributes every Smart Data Model shares (GSMA-Commons and Location-Commons), in keyValues form.

    Input is validated against the official JSON schema of `entity_type` before any field is
    parsed, so a model exists only for data the schema accepts. Attributes the model does not
    name are kept as extras, as the schemas allow them.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    entity_type: ClassVar[str] = ""
    subject_context: ClassVar[str] = ""
    measured_attributes: ClassVar[frozenset[str]] = frozenset()
    """Properties that are observations: they carry `observedAt` (and a unit where one applies)."""
    relationship_targets: ClassVar[dict[str, str]] = {}
    """Relationship attribute → the entity type it points at (used to turn plain ids into URNs)."""

    id: str
    type: str
    dateCreated: UtcDateTime | None = None
    dateModified: UtcDateTime | None = None
    source: str | None = None
    name: str | None = None
    alternateName: str | None = None
    description: str | None = None
    dataProvider: str | None = None
    owner: list[str] | None = None
    seeAlso: list[str] | str | None = None
    location: dict[str, Any] | None = None
    address: dict[str, Any] | None = None
    areaServed: str | None = None

    _unit_codes: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _follow_official_schema(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        key_values = to_jsonable_python(data)
        key_values.setdefault("type", cls.entity_type)
        violations = official_validator().violations(cls.entity_type, key_values)
        if violations:
            raise ValueError(
                f"not a valid {cls.entity_type}: " + "; ".join(str(violation) for violation in violations)
            )
        return data

    def unit_code(self, attribute: str) -> str | None:
        """The UN/CEFACT unit of an attribute: the one read from the source, else the default."""
        return self._unit_codes.get(attribute) or default_unit_code(attribute)

    def with_unit_codes(self, unit_codes: dict[str, str]) -> SmartDataModel:
        """Remember units that differ from the defaults (as read from an NGSI-LD `unitCode`)."""
        for attribute, code in unit_codes.items():
            if code != default_unit_code(attribute):
                self._unit_codes[attribute] = code
        return self

    @property
    def unit_overrides(self) -> dict[str, str]:
        """Units of this entity that differ from `DEFAULT_UNIT_CODES`."""
        return dict(self._unit_codes)

    def observed_at(self) -> datetime | None:
        """When the measured properties were observed (their NGSI-LD `observedAt`)."""
        return None

    def key_values(self) -> dict[str, Any]:
        """The entity as a plain keyValues dict (Python values: datetimes stay datetimes)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class ObservedModel(SmartDataModel):
    """A Smart Data Model of an observation: it always has a `dateObserved` and a `location`."""

    dateObserved: UtcDateTime
    location: dict[str, Any]

    relationship_targets: ClassVar[dict[str, str]] = {
        "refDevice": "Device",
        "refPointOfInterest": "PointOfInterest",
        "refWeatherObserved": "WeatherObserved",
    }

    def observed_at(self) -> datetime | None:
        return self.dateObserved


POLLUTANTS: frozenset[str] = frozenset(
    {
        "as", "c6h6", "cd", "co", "co2", "ni", "no", "no2", "nox", "o3", "pb",
        "pm1", "pm10", "pm25", "pm4", "sh2", "so2", "tpc", "tsp", "volatileOrganicCompoundsTotal",
    }
)  # fmt: skip
"""AirQualityObserved measurands (all numbers ≥ 0 in the schema)."""


class AirQualityObserved(ObservedModel):
    """An observation of air quality at a place and time (dataModel.Environment, schema 0.1.4)."""

    entity_type: ClassVar[str] = "AirQualityObserved"
    subject_context: ClassVar[str] = ENVIRONMENT_CONTEXT
    measured_attributes: ClassVar[frozenset[str]] = POLLUTANTS | {
        "airQualityIndex",
        "airQualityLevel",
        "coLevel",
        "reliability",
        "temperature",
        "relativeHumidity",
        "windDirection",
        "windSpeed",
        "precipitation",
        "pressure",
        "charge",
    }

    type: str = "AirQualityObserved"
    as_: float | None = Field(default=None, alias="as")
    c6h6: float | None = None
    cd: float | None = None
    co: float | None = None
    co2: float | None = None
    ni: float | None = None
    no: float | None = None
    no2: float | None = None
    nox: float | None = None
    o3: float | None = None
    pb: float | None = None
    pm1: float | None = None
    pm10: float | None = None
    pm25: float | None = None
    pm4: float | None = None
    sh2: float | None = None
    so2: float | None = None
    tpc: int | None = None
    tsp: float | None = None
    volatileOrganicCompoundsTotal: float | None = None
    airQualityIndex: int | None = None
    airQualityLevel: str | None = None
    coLevel: str | None = None
    reliability: float | None = None
    temperature: float | None = None
    relativeHumidity: float | None = None
    windDirection: float | None = None
    windSpeed: float | None = None
    precipitation: float | bool | None = None
    pressure: float | None = None
    charge: float | None = None
    typeofLocation: str | None = None
    refDevice: str | None = None
    refPointOfInterest: str | None = None
    refWeatherObserved: str | None = None


class WeatherObserved(ObservedModel):
    """An observation of weather conditions at a place and time (dataModel.Weather, schema 0.3.4)."""

    entity_type: ClassVar[str] = "WeatherObserved"
    subject_context: ClassVar[str] = WEATHER_CONTEXT
    measured_attributes: ClassVar[frozenset[str]] = frozenset(
        {
            "temperature", "feelsLikeTemperature", "dewPoint", "relativeHumidity", "atmosphericPressure",
            "pressureTendency", "illuminance", "windDirection", "windSpeed", "gustSpeed", "visibility",
            "precipitation", "solarRadiation", "directIrradiation", "diffuseIrradiation", "streamGauge",
            "snowHeight", "uVIndexMax", "airQualityIndex", "aqiMajorPollutant", "weatherType",
        }
    )  # fmt: skip

    type: str = "WeatherObserved"
    temperature: float | None = None
    feelsLikeTemperature: float | None = None
    dewPoint: float | None = None
    relativeHumidity: float | None = None
    atmosphericPressure: float | None = None
    pressureTendency: float | str | None = None
    illuminance: float | None = None
    windDirection: float | None = None
    windSpeed: float | None = None
    gustSpeed: float | None = None
    visibility: float | str | None = None
    precipitation: float | None = None
    solarRadiation: float | None = None
    directIrradiation: float | None = None
    diffuseIrradiation: float | None = None
    streamGauge: float | None = None
    snowHeight: float | None = None
    uVIndexMax: float | None = None
    airQualityIndex: float | None = None
    aqiMajorPollutant: str | None = None
    weatherType: str | None = None
    refDevice: str | None = None
    refPointOfInterest: str | None = None


class KeyPerformanceIndicator(SmartDataModel):
    """A key performance indicator and its current value (dataModel.KeyPerformanceIndicator, schema 0.2.1)."""

    entity_type: ClassVar[str] = "KeyPerformanceIndicator"
    subject_context: ClassVar[str] = KPI_CONTEXT
    measured_attributes: ClassVar[frozenset[str]] = frozenset({"kpiValue", "currentStanding"})

    type: str = "KeyPerformanceIndicator"
    kpiValue: Any = None
    category: list[str] | None = None
    organization: str | None = None
    process: str | None = None
    product: str | None = None
    provider: str | None = None
    businessTarget: str | None = None
    calculatedBy: str | None = None
    calculationFrequency: str | None = None
    calculationMethod: str | None = None
    calculationFormula: str | None = None
    calculationPeriod: dict[str, Any] | None = None
    aggregatedData: list[dict[str, Any]] | None = None
    currentStanding: str | None = None
    effectiveSince: UtcDateTime | None = None
    dateExpires: UtcDateTime | None = None
    updatedAt: UtcDateTime | None = None
    dateNextCalculation: date | UtcDateTime | None = None
    area: str | None = None

    def observed_at(self) -> datetime | None:
        # A KPI value is "observed" when it was last calculated.
        return self.updatedAt or self.dateModified


MODEL_TYPES: dict[str, type[SmartDataModel]] = {
    model.entity_type: model for model in (AirQualityObserved, WeatherObserved, KeyPerformanceIndicator)
}
"""Entity type name → its model class."""
