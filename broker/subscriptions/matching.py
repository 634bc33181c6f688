"""Which subscriptions an entity change notifies and with what data (GS CIM 009 5.11, pure functions)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from broker.changes import EntityChange
from broker.subscriptions.model import Subscription

NGSI_LD_NULL = "urn:ngsi-ld:null"
RELATIONSHIP = "Relationship"


def iso(at: datetime) -> str:
    """ISO 8601 UTC with milliseconds and Z, as stored timestamps are written."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def touched_attributes(change: EntityChange) -> set[str]:
    """The attributes a write touched; derived from before/after when the writer did not say."""
    if change.attributes:
        return set(change.attributes)
    before = (change.before or {}).get("doc") or {}
    after = (change.after or {}).get("doc") or {}
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def events_of(change: EntityChange) -> dict[str, set[str]]:
    """GS CIM 009 5.2.12 notificationTrigger: the events of a change and the attributes of each."""
    before = (change.before or {}).get("doc") or {}
    after = (change.after or {}).get("doc") or {}
    if change.kind == "create" or change.before is None:
        return {"entityCreated": set(after), "attributeCreated": set(after)}
    if change.kind == "delete" or change.after is None:
        return {"entityDeleted": set(before)}
    touched = touched_attributes(change)
    created = {name for name in touched if name in after and name not in before}
    updated = {name for name in touched if name in after and name in before}
    deleted = {name for name in touched if name not in after and name in before}
    events = {"entityUpdated": touched} if touched else {}
    for event, names in (("attributeCreated", created), ("attributeUpdated", updated),
                         ("attributeDeleted", deleted)):
        if names:
            events[event] = names
    return events


def fired_attributes(
    sub: Subscription, change: EntityChange, events: dict[str, set[str]] | None = None
) -> set[str] | None:
    """The attributes whose events fire `sub` (empty set = entity-level event), or None.

    `events` are `events_of(change)`, when the caller has them already (one change, many subscriptions).
    """
    fired: set[str] | None = None
    for event, names in (events if events is not None else events_of(change)).items():
        if event not in sub.triggers:
            continue
        # GS CIM 009 5.11: watchedAttributes restrict attribute events; deletion of the entity always counts.
        relevant = names if not sub.watched or event == "entityDeleted" else names & sub.watched
        if sub.watched and event != "entityDeleted" and not relevant:
            continue
        fired = (fired or set()) | relevant
    return fired


def selects(sub: Subscription, entity: dict[str, Any]) -> bool:
    if not sub.entities:
        return True
    types = entity.get("types") or []
    return any(selector.selects(entity["id"], types) for selector in sub.entities)


def notification_entity(
    sub: Subscription, change: EntityChange, fired: set[str]
) -> dict[str, Any]:
    """The entity a notification carries, in the stored (expanded) shape, before compaction."""
    if change.after is None:
        before = change.before or {}
        return {"id": change.entity_id, "types": before.get("types") or [], "doc": {}, "deletedAt": iso(change.at)}
    after = change.after
    doc: dict[str, list[dict[str, Any]]] = after.get("doc") or {}
    if sub.notify_attributes:
        doc = {name: instances for name, instances in doc.items() if name in sub.notify_attributes}
    else:
        doc = dict(doc)
    before_doc: dict[str, list[dict[str, Any]]] = (change.before or {}).get("doc") or {}
    for name in fired:
        if name not in doc and name in before_doc and name not in (after.get("doc") or {}):
            if not sub.notify_attributes or name in sub.notify_attributes:
                # An attributeDeleted notification names the deleted attribute with an NGSI-LD null.
                at = iso(change.at)
                doc[name] = [_deleted_instance(instance, at) for instance in before_doc[name]]
    if sub.show_changes:
        doc = {name: _with_previous(instances, before_doc.get(name)) for name, instances in doc.items()}
    return {**after, "doc": doc}


def _deleted_instance(instance: dict[str, Any], at: str) -> dict[str, Any]:
    deleted = {"type": instance.get("type", "Property"), "deletedAt": at}
    if "datasetId" in instance:
        deleted["datasetId"] = instance["datasetId"]
    deleted["object" if deleted["type"] == RELATIONSHIP else "value"] = NGSI_LD_NULL
    return deleted


def _with_previous(
    instances: list[dict[str, Any]], previous: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """GS CIM 009 5.2.14 showChanges: each instance the change touched carries the value it had before it
    (an untouched one, equal to what it was, carries none: as Orion-LD, only the updated attributes)."""
    if not previous:
        return instances
    by_dataset = {instance.get("datasetId"): instance for instance in previous}
    result = []
    for instance in instances:
        old = by_dataset.get(instance.get("datasetId"))
        if old is None or old == instance:
            result.append(instance)
            continue
        extra: dict[str, Any] = {}
        for member, previous_member in (("value", "previousValue"), ("object", "previousObject"),
                                        ("objectList", "previousObjectList"),
                                        ("languageMap", "previousLanguageMap"),
                                        ("vocab", "previousVocab"), ("json", "previousJson")):
            if member in old:
                extra[previous_member] = old[member]
        result.append({**instance, **extra})
    return result


def match_change(
    subscriptions: Iterable[Subscription], change: EntityChange, now: datetime
) -> list[tuple[Subscription, dict[str, Any]]]:
    """Every live subscription the change notifies, with the entity its notification carries.

    Subscriptions whose notifications carry equal entities get the same dict (not to be mutated).

    q and geoQ are not evaluated here: the caller checks them in SQL on the entity as the change
    left it (GS CIM 009 5.11), with the query engine's compiler.
    """
    entity = change.after or change.before
    if entity is None:
        return []
    matched = []
    # Subscriptions that ask for the same attributes in the same way get the same (shared) entity.
    built: dict[tuple[frozenset[str], bool, frozenset[str]], dict[str, Any]] = {}
    events: dict[str, set[str]] | None = None
    for sub in subscriptions:
        if not sub.is_live(now) or sub.time_interval is not None:
            continue
        if not selects(sub, entity):
            continue
        if events is None:
            events = events_of(change)
        fired = fired_attributes(sub, change, events)
        if fired is None:
            continue
        key = (sub.notify_attributes, sub.show_changes, frozenset(fired))
        notified = built.get(key)
        if notified is None:
            notified = built[key] = notification_entity(sub, change, fired)
        matched.append((sub, notified))
    return matched
