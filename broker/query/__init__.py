"""NGSI-LD query language, type/id selection and geo-queries: pure parsers, SQL compilers and Python evaluators.

Compiled SQL fragments carry their values as `Param`s; run a statement built from them with
`cursor.execute(statement, bound_params(statement))`.
"""

from broker.query.geo import (
    GeoQuery,
    compile_geo_prefilter,
    compile_near_condition,
    compile_point_distance,
    distance,
    geo_bbox_of,
    geo_matches,
    parse_geo_query,
)
from broker.query.params import Param, bound_params
from broker.query.q import QExpr, attribute_names, compile_q, expand_q, matches_q, parse_q
from broker.query.types import (
    IdPattern,
    TypeExpr,
    compile_id_pattern,
    compile_ids,
    compile_types,
    expand_types,
    matches_id_pattern,
    matches_types,
    parse_id_pattern,
    parse_ids,
    parse_types,
)

__all__ = [
    "GeoQuery",
    "IdPattern",
    "Param",
    "QExpr",
    "TypeExpr",
    "attribute_names",
    "bound_params",
    "compile_geo_prefilter",
    "compile_id_pattern",
    "compile_ids",
    "compile_near_condition",
    "compile_point_distance",
    "compile_q",
    "compile_types",
    "distance",
    "expand_q",
    "expand_types",
    "geo_bbox_of",
    "geo_matches",
    "matches_id_pattern",
    "matches_q",
    "matches_types",
    "parse_geo_query",
    "parse_id_pattern",
    "parse_ids",
    "parse_q",
    "parse_types",
]
