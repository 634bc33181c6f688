"""The agents' quarantine: records kept with payload, source, reason and time; list, show, replay."""

from __future__ import annotations

from pathlib import Path

from agents.quarantine import Quarantine, QuarantinedRecord


def test_records_keep_payload_source_reason_and_time(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    text_id = quarantine.add(agent="iot", source="mqtt:/ul/k/d/attrs", payload="t|x", reason="not a number",
                             metadata={"tenant": "madrid"})  # fmt: skip
    binary_id = quarantine.add(agent="files", source="file:a.csv:12", payload=b"\xff\x00", reason="not UTF-8")
    record = quarantine.get(text_id)
    assert record is not None
    assert (record.agent, record.source, record.payload, record.reason) == ("iot", "mqtt:/ul/k/d/attrs", "t|x",
                                                                             "not a number")  # fmt: skip
    assert record.metadata == {"tenant": "madrid"}
    assert record.quarantined_at.tzinfo is not None
    binary = quarantine.get(binary_id)
    assert binary is not None and binary.payload == b"\xff\x00"
    assert binary.as_dict()["payload"] == "ff00"
    assert [r.id for r in quarantine.list()] == [binary_id, text_id]  # newest first
    assert [r.id for r in quarantine.list(agent="iot")] == [text_id]
    assert quarantine.count() == 2 and quarantine.count(agent="files") == 1


def test_records_are_shared_between_processes_through_the_file(tmp_path: Path) -> None:
    writer = Quarantine(tmp_path / "quarantine.sqlite")
    reader = Quarantine(tmp_path / "quarantine.sqlite")
    record_id = writer.add(agent="oup", source="wss://oup/live", payload="{}", reason="no cityName")
    shown = reader.get(record_id)
    assert shown is not None and shown.reason == "no cityName"


async def test_replay_removes_what_goes_through_and_keeps_what_still_fails(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    fixed = quarantine.add(agent="iot", source="s", payload="t|1", reason="unknown device")
    broken = quarantine.add(agent="iot", source="s", payload="t|x", reason="not a number")
    replayed: list[str | bytes] = []

    async def handler(record: QuarantinedRecord) -> None:
        if record.payload == "t|x":
            raise ValueError("attribute 't' is declared Number but the device sent 'x'")
        replayed.append(record.payload)

    outcome = await quarantine.replay([fixed, broken, 999], handler)
    assert outcome.replayed == [fixed]
    assert outcome.missing == [999]
    assert "declared Number" in outcome.failed[broken]
    assert replayed == ["t|1"]
    assert quarantine.get(fixed) is None
    kept = quarantine.get(broken)
    assert kept is not None and kept.attempts == 1 and "declared Number" in kept.reason
    assert kept.last_attempt_at is not None
