"""MQTT measure topics of FIWARE IoT Agents: `/ul/…`, `/json/…` and the legacy `/<apikey>/<device>/attrs`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Protocol = Literal["ul", "json"]

SUBSCRIPTION_FILTERS: tuple[str, ...] = (
    "/ul/+/+/attrs",
    "/ul/+/+/attrs/+",
    "/json/+/+/attrs",
    "/json/+/+/attrs/+",
    "/+/+/attrs",
    "/+/+/attrs/+",
)
"""What the agent subscribes to (each behind `$share/<group>/` when several agents share the load)."""


class TopicError(ValueError):
    """A topic that is not a measure topic of an IoT Agent."""


@dataclass(frozen=True)
class MeasureTopic:
    """What a measure topic says: protocol (None on legacy topics), API key, device, and the single attribute if any."""

    protocol: Protocol | None
    apikey: str
    device_id: str
    attribute: str | None = None


def parse_topic(topic: str) -> MeasureTopic:
    """The parts of a measure topic; TopicError for anything else."""
    levels = topic.split("/")
    if not levels or levels[0] != "":
        raise TopicError(f"topic {topic!r} does not start with '/'")
    levels = levels[1:]
    protocol: Protocol | None = None
    if levels and levels[0] in ("ul", "json") and len(levels) >= 4 and levels[3] == "attrs":
        protocol = "ul" if levels[0] == "ul" else "json"
        levels = levels[1:]
    if len(levels) not in (3, 4) or levels[2] != "attrs" or not levels[0] or not levels[1]:
        raise TopicError(f"topic {topic!r} is not /[ul|json/]<apikey>/<device>/attrs[/<attribute>]")
    attribute = levels[3] if len(levels) == 4 else None
    if attribute == "":
        raise TopicError(f"topic {topic!r} names an empty attribute")
    return MeasureTopic(protocol, levels[0], levels[1], attribute)


def shared(topic_filter: str, group: str | None) -> str:
    """MQTT 5 shared subscription `$share/<group>/<filter>`, or the plain filter without a group."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter
