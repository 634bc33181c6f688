"""Compiles a subscription's q (SQL over `current_entities`) and geoQ (shapely) with the query engine."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from psycopg import sql

from broker.query.geo import GeoQuery, geo_matches, parse_geo_query
from broker.query.q import compile_q, parse_q
from broker.subscriptions.model import Subscription
from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData, NgsiError

EntityCondition = sql.Composable
"""A boolean SQL expression over the columns of `current_entities` (q and geoQ of one subscription)."""


def q_condition(q: str, terms: TermMap) -> EntityCondition:
    """The q-language expression (GS CIM 009 4.9) as SQL; 400 naming `q` when it does not parse."""
    try:
        return compile_q(parse_q(q), terms.expand)
    except NgsiError as error:
        raise BadRequestData(f"'q' does not parse: {error.detail}", title="Invalid subscription",
                             parameter="q") from None


def geo_query(geo_q: dict[str, Any], terms: TermMap) -> GeoQuery:
    """The geoQ (GS CIM 009 4.10) parsed by the query engine; 400 naming `geoQ` when it is invalid."""
    coordinates = geo_q.get("coordinates")
    if isinstance(coordinates, list):
        coordinates = json.dumps(coordinates)
    try:
        query = parse_geo_query(geo_q.get("georel"), geo_q.get("geometry"), coordinates, geo_q.get("geoproperty"))
    except NgsiError as error:
        raise BadRequestData(f"'geoQ' is invalid: {error.detail}", title="Invalid subscription",
                             parameter="geoQ") from None
    return replace(query, geoproperty=terms.expand(query.geoproperty))


def geo_holds(query: GeoQuery, entity: dict[str, Any]) -> bool:
    """Whether the entity's GeoProperty (as the change left it) satisfies the geoQ."""
    instances = (entity.get("doc") or {}).get(query.geoproperty) or []
    return any(geo_matches(query, instance.get("value")) for instance in instances if isinstance(instance, dict))


@dataclass(frozen=True, slots=True)
class EntityFilter:
    """A subscription's q (as SQL, run in the writing transaction) and geoQ (checked with shapely)."""

    condition: EntityCondition | None
    geo: GeoQuery | None

    def geo_holds(self, entity: dict[str, Any]) -> bool:
        return self.geo is None or geo_holds(self.geo, entity)


def entity_filter(sub: Subscription, terms: TermMap) -> EntityFilter:
    return EntityFilter(
        condition=q_condition(sub.q, terms) if sub.q else None,
        geo=geo_query(sub.geo_q, terms) if sub.geo_q else None,
    )
