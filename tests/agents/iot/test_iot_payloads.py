"""UltraLight 2.0 and JSON measure payloads, MQTT topics and value expressions, as FIWARE IoT Agents read them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agents.iot.expressions import ExpressionError, evaluate_expression
from agents.iot.payloads import PayloadError, parse_json_measures, parse_single_value, parse_ultralight
from agents.iot.topics import MeasureTopic, TopicError, parse_topic, shared

T0 = datetime(2016, 6, 13, 0, 35, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("t|21.5|h|40", [({"t": "21.5", "h": "40"}, None)]),
        ("t|21.5|h|40#t|22|h|41", [({"t": "21.5", "h": "40"}, None), ({"t": "22", "h": "41"}, None)]),
        ("2016-06-13T00:35:30Z|lle|100", [({"lle": "100"}, T0)]),
        ("t|1|TimeInstant|2016-06-13T00:35:30Z", [({"t": "1"}, T0)]),
        ("t|1|TimeInstant|2016-06-13T02:35:30+02:00", [({"t": "1"}, T0)]),
        (" t | 1 \n", [({"t": "1"}, None)]),
        ("t|1#", [({"t": "1"}, None)]),
        ("name|Plaza Mayor", [({"name": "Plaza Mayor"}, None)]),
    ],
)
def test_ultralight_groups_pairs_and_timestamps(payload: str, expected: list[tuple[dict[str, str], Any]]) -> None:
    measures = parse_ultralight(payload)
    assert [(m.values, m.observed_at) for m in measures] == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("t|21|h", "odd number of fields"),
        ("", "empty"),
        ("|1", "empty attribute name"),
        ("t|1|TimeInstant|yesterday", "not an ISO 8601"),
    ],
)
def test_bad_ultralight_is_refused_with_the_reason(payload: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_ultralight(payload)


def test_json_object_and_array_of_objects() -> None:
    [one] = parse_json_measures(b'{"t": 21.5, "s": "ok", "TimeInstant": "2016-06-13T00:35:30Z"}')
    assert one.values == {"t": 21.5, "s": "ok"} and one.observed_at == T0
    many = parse_json_measures('[{"t": 1}, {"t": 2}]')
    assert [m.values["t"] for m in many] == [1, 2]


@pytest.mark.parametrize(("payload", "message"), [("[1, 2]", "not an object"), ("{", "not JSON"), ("[]", "empty")])
def test_bad_json_is_refused_with_the_reason(payload: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_json_measures(payload)


def test_single_attribute_payloads() -> None:
    assert parse_single_value(b"21.5", "t", json=False)[0].values == {"t": "21.5"}
    assert parse_single_value(b"21.5", "t", json=True)[0].values == {"t": 21.5}
    assert parse_single_value(b"on", "s", json=True)[0].values == {"s": "on"}


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("/ul/key/dev/attrs", MeasureTopic("ul", "key", "dev")),
        ("/json/key/dev/attrs", MeasureTopic("json", "key", "dev")),
        ("/ul/key/dev/attrs/t", MeasureTopic("ul", "key", "dev", "t")),
        ("/key/dev/attrs", MeasureTopic(None, "key", "dev")),
        ("/key/dev/attrs/t", MeasureTopic(None, "key", "dev", "t")),
    ],
)
def test_measure_topics(topic: str, expected: MeasureTopic) -> None:
    assert parse_topic(topic) == expected


@pytest.mark.parametrize("topic", ["ul/key/dev/attrs", "/ul/key/dev/cmd", "/key/attrs", "/a/b/c/d/e/f", "/k/d/attrs/"])
def test_other_topics_are_not_measures(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_shared_subscription_filter() -> None:
    assert shared("/ul/+/+/attrs", "iot") == "$share/iot//ul/+/+/attrs"
    assert shared("/ul/+/+/attrs", None) == "/ul/+/+/attrs"


@pytest.mark.parametrize(
    ("expression", "variables", "expected"),
    [
        ("${@t * 1.8 + 32}", {"t": 100}, 212.0),
        ("(f - 32) / 1.8", {"f": 212}, 100.0),
        ("round(h / 100, 2)", {"h": 45.678}, 0.46),
        ("max(a, b) - min(a, b)", {"a": 3, "b": 10}, 7),
        ("2 ** 10", {}, 1024),
        ("-x + abs(y)", {"x": 1, "y": -5}, 4),
        ("v * 1000", {"v": 0.5}, 500.0),
    ],
)
def test_expressions_compute_values(expression: str, variables: dict[str, Any], expected: Any) -> None:
    assert evaluate_expression(expression, variables) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "calls something other than"),
        ("t.__class__", "Attribute"),
        ("(lambda: 1)()", "calls something other than"),
        ("[x for x in range(3)]", "not allowed"),
        ("t if t else 0", "not allowed"),
        ("open('/etc/passwd')", "calls something other than"),
        ("t +", "does not parse"),
        ("missing * 2", "no attribute 'missing'"),
        ("t / 0", "failed"),
        ("10 ** 100000", "too large"),
        ("t * 2", "failed"),
    ],
)
def test_expressions_outside_the_whitelist_or_failing_are_refused(expression: str, message: str) -> None:
    variables = {"t": "text"} if expression == "t * 2" else {"t": 1}
    with pytest.raises(ExpressionError, match=message):
        evaluate_expression(expression, variables)
