"""Compiles a subscription's q and geoQ into one SQL condition over `current_entities`, with `broker.query`."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from broker.query.q import compile_q, parse_q
from broker.subscriptions.model import Subscription
from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData, NgsiError, OperationNotSupported

EntityCondition = sql.Composable
"""A boolean SQL expression over the columns of `current_entities` (q and geoQ of one subscription)."""


def q_condition(q: str, terms: TermMap) -> EntityCondition:
    """The q-language expression (GS CIM 009 4.9) as SQL; 400 naming `q` when it does not parse."""
    try:
        return compile_q(parse_q(q), terms.expand)
    except NgsiError as error:
        raise BadRequestData(f"'q' does not parse: {error.detail}", title="Invalid subscription",
                             parameter="q") from None


def geo_condition(geo_q: dict[str, Any], terms: TermMap) -> EntityCondition:
    """The geoQ (GS CIM 009 4.10) as SQL; 400 naming `geoQ` when the geometry is invalid."""
    try:
        from broker.query import geo  # type: ignore[attr-defined]
    except ImportError:
        raise OperationNotSupported("'geoQ' in subscriptions needs the geo-query engine (broker.query)") from None
    try:
        condition: EntityCondition = geo.compile_geo_query(geo_q, terms)
    except NgsiError as error:
        raise BadRequestData(f"'geoQ' is invalid: {error.detail}", title="Invalid subscription",
                             parameter="geoQ") from None
    return condition


def entity_condition(sub: Subscription, terms: TermMap) -> EntityCondition | None:
    """q and geoQ together; None when the subscription has neither."""
    parts = []
    if sub.q:
        parts.append(q_condition(sub.q, terms))
    if sub.geo_q:
        parts.append(geo_condition(sub.geo_q, terms))
    if not parts:
        return None
    return sql.SQL("(") + sql.SQL(" AND ").join(parts) + sql.SQL(")")
