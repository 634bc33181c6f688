"""Smart Data Models (AirQualityObserved, WeatherObserved, KeyPerformanceIndicator): models, schemas, NGSI-LD forms."""

from smart_data_models.conversion import (
    DEFAULT_CONTEXT,
    InvalidSmartDataModel,
    from_ngsi_ld,
    to_ngsi_ld,
)
from smart_data_models.ids import as_urn, entity_id, sanitise_id_part
from smart_data_models.models import (
    MODEL_TYPES,
    AirQualityObserved,
    KeyPerformanceIndicator,
    ObservedModel,
    SmartDataModel,
    WeatherObserved,
    format_timestamp,
)
from smart_data_models.units import DEFAULT_UNIT_CODES, default_unit_code
from smart_data_models.validation import (
    UPSTREAM_ERRATA,
    SchemaValidator,
    SchemaViolation,
    official_validator,
)

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_UNIT_CODES",
    "MODEL_TYPES",
    "UPSTREAM_ERRATA",
    "AirQualityObserved",
    "InvalidSmartDataModel",
    "KeyPerformanceIndicator",
    "ObservedModel",
    "SchemaValidator",
    "SchemaViolation",
    "SmartDataModel",
    "WeatherObserved",
    "as_urn",
    "default_unit_code",
    "entity_id",
    "format_timestamp",
    "from_ngsi_ld",
    "official_validator",
    "sanitise_id_part",
    "to_ngsi_ld",
]
