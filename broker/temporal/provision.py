"""Turns temporal payloads (attributes → arrays of instances) into TRoE history rows, checked (pure).

The backfill path: plain Property instances with scalar values take a lean route, straight to the
text of `COPY attributes` lines when the caller collects them (`CopyLines`); anything else goes
through `ngsi.forms` validation and expansion one instance at a time.
"""

from __future__ import annotations

import re
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


# COPY text format: backslash, newline, carriage return and tab are escaped; `\N` is NULL.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_COPY_NULL = "\\N"
# An ISO 8601 UTC stamp PostgreSQL reads as the same `timestamp` once the `Z` is cut off.
_UTC_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")


def copy_field(text: str) -> str:
    """A text value as one field of a `COPY ... FROM STDIN` line (text format)."""
    return text.translate(_COPY_ESCAPES)


class CopyLines:
    """`COPY attributes` lines (text format, columns as `broker.storage.history.ATTRIBUTE_COLUMNS`).

    The backfill path writes plain instances as text directly: per-field adaptation of row tuples
    cost more broker CPU than everything else an append does.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._fields: dict[str | None, str] = {None: _COPY_NULL}

    def field(self, text: str | None) -> str:
        """A repeated value (attribute name, entity id, unit code, datasetId) as a COPY field, escaped once."""
        known = self._fields.get(text)
        if known is None:
            known = self._fields[text] = copy_field(text)  # type: ignore[arg-type]
        return known


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


def _observed_copy_field(value: Any, name: str) -> str:
    """observedAt as a COPY field of the naive UTC `timestamp` TRoE stores; checked like `_observed_at`."""
    if isinstance(value, str) and _UTC_STAMP.fullmatch(value):
        try:
            datetime.fromisoformat(value[:-1])  # the shape is right; is the date real?
        except ValueError:
            pass
        else:
            return value[:-1]
    moment = _observed_at(value, name)
    return _COPY_NULL if moment is None else moment.isoformat()


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
    copy: CopyLines | None = None,
    given: list[str] | None = None,
) -> int:
    """Add one `attributes` row per instance (and `subAttributes` rows) to `rows`; returns the instance count.

    Each attribute maps to one instance or an array of instances (the temporal representation,
    GS CIM 009 4.5.7): unlike a multi-attribute, many instances may share the default datasetId.
    With `copy`, plain Property instances go there as COPY lines instead of into `rows`. An
    instance that brings its own `instanceId` (a URI) keeps it and, with `given`, it is listed
    there, so that the caller can skip instances the history already holds (an idempotent resend).
    """
    ts = at.astimezone(UTC).replace(tzinfo=None)
    ids = InstanceIds()
    added = 0
    now_text = format_timestamp(at)
    ts_field = ts.isoformat()
    for name, raw in attributes.items():
        if name in _ENTITY_MEMBERS:
            continue
        forms.check_attribute_name(name)
        iri = terms.expand(name)
        # GS CIM 009 4.5.7: in the temporal representation an attribute is an array of instances, each
        # in any form (`[1, 2]` is two instances, `[]` none); a lone instance may stand without the array.
        instances = raw if isinstance(raw, list) else [raw]
        append = rows.attributes.append
        if copy is not None:
            # Everything but the value columns, observedAt, unitCode and datasetId is the same on each line.
            head = f"{op}\t{copy.field(entity_id)}\t"
            name_field = copy.field(iri)
            lines = copy.lines.append
        for instance in instances:
            added += 1
            is_object = isinstance(instance, dict) or isinstance(instance, Mapping)
            value = instance.get("value") if is_object else None
            if (
                is_object
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
                if copy is not None:
                    if isinstance(value, bool):
                        routed_field = "Boolean\t\\N\t" + ("t" if value else "f") + "\t\\N"
                    elif isinstance(value, str):
                        routed_field = "String\t" + copy_field(value) + "\t\\N\t\\N"
                    else:
                        routed_field = "Number\t\\N\t\\N\t" + repr(float(value))
                    instance_id = ids.next() if "instanceId" not in instance else _instance_id(instance, ids, given)
                    lines(
                        f"{instance_id}\t{name_field}\t{head}{_observed_copy_field(instance.get('observedAt'), name)}"
                        f"\tf\t{copy.field(unit)}\t{copy.field(dataset)}\t{routed_field}\t\\N\t\\N\t{ts_field}\n"
                    )
                    continue
                observed = _observed_at(instance.get("observedAt"), name)
                if isinstance(value, bool):
                    routed: tuple[Any, ...] = ("Boolean", None, value, None)
                elif isinstance(value, str):
                    routed = ("String", value, None, None)
                else:
                    routed = ("Number", None, None, float(value))
                append((_instance_id(instance, ids, given), iri, op, entity_id, observed, False, unit, dataset,
                        *routed, None, None, ts))  # fmt: skip
                continue
            [expanded] = forms.expand_attributes({name: instance}, terms, now_text).values()
            _add_expanded(rows, ids, op, entity_id, iri, expanded[0], ts, given)
    return added


def _instance_id(instance: Mapping[str, Any], ids: InstanceIds, given: list[str] | None) -> str:
    """The instance's own instanceId when it brings a URI (listed in `given`), else a new one."""
    own = instance.get("instanceId")
    if own is None or not forms.is_uri(own):
        return ids.next()
    if given is not None:
        given.append(own)
    return str(own)


def drop_instances(rows: HistoryRows, copy: CopyLines | None, known: set[str]) -> None:
    """Remove instances (with their sub-attributes) whose instanceId is in `known` or repeats one before it."""
    seen = set(known)

    def keep(instance_id: str) -> bool:
        if instance_id in seen:
            return False
        seen.add(instance_id)
        return True

    if copy is not None:
        copy.lines = [line for line in copy.lines if keep(line[: line.index("\t")])]
    kept = [row for row in rows.attributes if keep(row[0])]
    dropped = {row[0] for row in rows.attributes} - {row[0] for row in kept}
    rows.attributes = kept
    if dropped:
        rows.sub_attributes = [row for row in rows.sub_attributes if row[3] not in dropped]


def _add_expanded(
    rows: HistoryRows,
    ids: InstanceIds,
    op: str,
    entity_id: str,
    iri: str,
    instance: dict[str, Any],
    ts: datetime,
    given: list[str] | None = None,
) -> None:
    instance_id = _instance_id(instance, ids, given)
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
