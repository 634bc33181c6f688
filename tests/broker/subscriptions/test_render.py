"""The @context of JSON-LD notifications (broker/subscriptions/notifier/render.py)."""

from __future__ import annotations

from broker.subscriptions.notifier.render import with_core

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"


def test_a_json_ld_notification_carries_the_core_context_after_the_subscriptions() -> None:
    user = "http://127.0.0.1:1026/ngsi-ld/v1/jsonldContexts/abc"
    assert with_core(None) == CORE
    assert with_core(user) == [user, CORE]
    assert with_core([{"no2": "http://example.org/no2"}]) == [{"no2": "http://example.org/no2"}, CORE]
    assert with_core([user, CORE]) == [user, CORE]  # already there: not twice
