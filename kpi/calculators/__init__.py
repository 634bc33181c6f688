"""KPI calculators: pure functions, exact to the standards they cite."""

from kpi.calculators.caqi import Caqi, common_air_quality_index
from kpi.calculators.eaqi import EeaIndex, eea_air_quality_index, eea_pollutant_level
from kpi.calculators.limit_values import STANDARDS, Exceedances, LimitValue, count_exceedances, find_limit
from kpi.calculators.us_aqi import UsAqi, aqi_sub_index, nowcast, ugm3_to_ppb, us_air_quality_index

__all__ = [
    "STANDARDS",
    "Caqi",
    "EeaIndex",
    "Exceedances",
    "LimitValue",
    "UsAqi",
    "aqi_sub_index",
    "common_air_quality_index",
    "count_exceedances",
    "eea_air_quality_index",
    "eea_pollutant_level",
    "find_limit",
    "nowcast",
    "ugm3_to_ppb",
    "us_air_quality_index",
]
