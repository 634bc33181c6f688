"""Turns temporal payloads (attributes → arrays of instances) into TRoE history rows, checked (pure).

The backfill path: plain Property instances with scalar values take a lean route; anything else
goes through `ngsi.forms` validation and expansion one instance at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from broker.storage.history import HistoryRows, route_value, sub_attribute_names
from ngsi import forms
from ngsi.contexts import TermMap
from ngsi.errors import BadRequestData
from ngsi.timestamps import format_timestamp

_LEAN_MEMBERS = frozenset({"type", "value", "observedAt", "unitCode", "datasetId", "instanceId",
                           "createdAt", "modifiedAt"})  # fmt: skip
_ENTITY_MEMBERS = frozenset({"id", "type", "scope", "@context"})


class InstanceIds:
    """TRoE instanceIds for one request: a random UUID prefix and a counter (cheaper than uuid4 per row)."""

    def __init__(self) -> None:
        text = str(uuid.uuid4())
        self._prefix = f"urn:ngsi-ld:attribute:instance:{text[:24]}"
        self._counter = int(text[24:], 16)

    def next(self) -> str:
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFF
        return f"{self._prefix}{self._counter:012x}"


def _observed_at(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            # A trailing Z is UTC already: parsing without it gives the naive UTC time TRoE stores.
            moment = datetime.fromisoformat(value[:-1] if value.endswith("Z") else value)
        except ValueError:
            moment = None
        if moment is not None:
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC).replace(tzinfo=None)
            return moment
    raise BadRequestData(f"attribute {name!r}: observedAt {value!r} is not an ISO 8601 date-time", attribute=name)


def entity_header(body: Any, terms: TermMap) -> tuple[str, str]:
    """The (id, expanded first type) of a temporal entity payload (GS CIM 009 5.6.11)."""
    if not isinstance(body, Mapping):
        raise BadRequestData("A temporal entity must be a JSON object")
    entity_id = body.get("id")
    if not forms.is_uri(entity_id):
        raise BadRequestData(f"Entity id must be a URI, got {entity_id!r}", title="Invalid entity id")
    kind = body.get("type")
    types = kind if isinstance(kind, list) else [kind]
    if not types:
        raise BadRequestData(f"Entity {entity_id!r} has no 'type'")
    for name in types:
        forms.check_type_name(name)
    return str(entity_id), terms.expand_type(str(types[0]))


def attribute_rows(
    rows: HistoryRows,
    entity_id: str,
    attributes: Mapping[str, Any],
    terms: TermMap,
    at: datetime,
    *,
    op: str = "Append",
) -> int:
    """Add one `attributes` row per instance (and `subAttributes` rows) to `rows`; returns the instance count.

    Each attribute maps to one instance or an array of instances (the temporal representation,
    GS CIM 009 4.5.7): unlike a multi-attribute, many instances may share the default datasetId.
    """
    ts = at.astimezone(UTC).replace(tzinfo=None)
    ids = InstanceIds()
    added = 0
    now_text = format_timestamp(at)
    for name, raw in attributes.items():
        if name in _ENTITY_MEMBERS:
            continue
        forms.check_attribute_name(name)
        iri = terms.expand(name)
        instances = raw if isinstance(raw, list) and raw and all(isinstance(i, Mapping) for i in raw) else [raw]
        append = rows.attributes.append
        for instance in instances:
            added += 1
            value = instance.get("value") if isinstance(instance, Mapping) else None
            if (
                isinstance(instance, Mapping)
                and instance.get("type", "Property") == "Property"
                and isinstance(value, int | float | str)
                and instance.keys() <= _LEAN_MEMBERS
            ):
                unit = instance.get("unitCode")
                dataset = instance.get("datasetId")
                if (unit is not None and not isinstance(unit, str)) or (
                    dataset is not None and not forms.is_uri(dataset)
                ):
                    raise BadRequestData(f"attribute {name!r}: invalid unitCode or datasetId", attribute=name)
                observed = _observed_at(instance.get("observedAt"), name)
                if isinstance(value, bool):
                    routed: tuple[Any, ...] = ("Boolean", None, value, None)
                elif isinstance(value, str):
                    routed = ("String", value, None, None)
                else:
                    routed = ("Number", None, None, float(value))
                append((ids.next(), iri, op, entity_id, observed, False, unit, dataset, *routed, None, None, ts))
                continue
            [expanded] = forms.expand_attributes({name: instance}, terms, now_text).values()
            _add_expanded(rows, ids, op, entity_id, iri, expanded[0], ts)
    return added


def _add_expanded(
    rows: HistoryRows, ids: InstanceIds, op: str, entity_id: str, iri: str, instance: dict[str, Any], ts: datetime
) -> None:
    instance_id = ids.next()
    subs = sub_attribute_names(instance)
    value_type, text, boolean, number, moment, compound = route_value(instance)
    rows.attributes.append((
        instance_id, iri, op, entity_id, _observed_at(instance.get("observedAt"), iri), bool(subs),
        instance.get("unitCode"), instance.get("datasetId"), value_type, text, boolean, number, moment,
        compound, ts,
    ))  # fmt: skip
    for sub_name in subs:
        for sub in instance[sub_name]:
            s_type, s_text, s_bool, s_number, s_moment, s_compound = route_value(sub)
            rows.sub_attributes.append((
                ids.next(), sub_name, entity_id, instance_id, _observed_at(sub.get("observedAt"), sub_name),
                sub.get("unitCode"), s_type, s_text, s_bool, s_number, s_moment, s_compound, ts,
            ))  # fmt: skip
