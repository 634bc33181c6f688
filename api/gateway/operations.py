"""What an NGSI-LD request does, from its method and path alone: the access it needs and what it touches."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from api.auth.principal import Access

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BATCH_WRITES = frozenset({"create", "upsert", "update", "merge"})


class Target(StrEnum):
    """Which kind of resource a request writes, for the checks beyond role and tenant."""

    NONE = "none"
    ENTITY_BODY = "entity-body"
    """POST /entities, POST /temporal/entities: one entity in the body (its type, maybe its id)."""
    ENTITY_PATH = "entity-path"
    """Writes under /entities/{id} or /temporal/entities/{id}: the entity named in the path."""
    ENTITY_BATCH = "entity-batch"
    """POST /entityOperations/{create,upsert,update,merge}: an array of entities."""
    SUBSCRIPTION_LIST = "subscription-list"
    SUBSCRIPTION_CREATE = "subscription-create"
    SUBSCRIPTION_ITEM = "subscription-item"


@dataclass(frozen=True)
class Operation:
    """The access a request needs, what it targets, and the entity or subscription id in its path."""

    access: Access
    target: Target = Target.NONE
    resource_id: str | None = None


def classify(method: str, segments: list[str]) -> Operation:
    """The operation of `method` on `/ngsi-ld/v1/<segments>` (GS CIM 009 6.4-6.31 resource tree)."""
    head = segments[0]
    rest = segments[1:]
    if head == "subscriptions":
        # GS CIM 009 6.10-6.11: subscriptions are managed by city admins and by their own provider.
        if not rest:
            return Operation(
                Access.SUBSCRIPTIONS, Target.SUBSCRIPTION_LIST if method in READ_METHODS else Target.SUBSCRIPTION_CREATE
            )
        return Operation(Access.SUBSCRIPTIONS, Target.SUBSCRIPTION_ITEM, rest[0])
    if method in READ_METHODS:
        return Operation(Access.READ)
    if segments in (["entityOperations", "query"], ["temporal", "entityOperations", "query"]):
        return Operation(Access.READ)  # GS CIM 009 6.23, 6.24: queries sent as POST
    if method == "DELETE":
        return Operation(Access.DELETE if head in ("entities", "temporal") else Access.ADMINISTER)
    if head == "entities":
        if not rest:
            return Operation(Access.WRITE, Target.ENTITY_BODY)
        return Operation(Access.WRITE, Target.ENTITY_PATH, rest[0])
    if head == "entityOperations" and len(rest) == 1:
        if rest[0] == "delete":
            return Operation(Access.DELETE)
        if rest[0] in BATCH_WRITES:
            return Operation(Access.WRITE, Target.ENTITY_BATCH)
    if head == "temporal" and rest[:1] == ["entities"]:
        if len(rest) == 1:
            return Operation(Access.WRITE, Target.ENTITY_BODY)
        return Operation(Access.WRITE, Target.ENTITY_PATH, rest[1])
    # Registrations, hosted @contexts and anything unknown: tenant set-up, city admins only.
    return Operation(Access.ADMINISTER)
