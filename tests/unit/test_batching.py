from __future__ import annotations

import orjson
import pytest

from braze_currents.batching import MAX_BATCH_BYTES, MAX_EVENT_BYTES, BatchBuilder, message_ids, split_body


def event(i: int, size: int = 100) -> bytes:
    return orjson.dumps({"type": "track", "userId": "u", "event": "E", "messageId": f"m{i}", "p": "x" * size})


def batches_of(events: list[bytes], **kwargs) -> list[bytes]:
    builder = BatchBuilder(integrations={"Braze": False}, **kwargs)
    out = [body for e in events for body in builder.add(e)]
    return out + [body for body in [builder.flush()] if body]


def test_batch_never_exceeds_2500_events():
    out = batches_of([event(i, 10) for i in range(6000)])
    assert [len(orjson.loads(b)["batch"]) for b in out] == [2500, 2500, 1000]


def test_batch_never_exceeds_475000_bytes_and_keeps_every_event():
    events = [event(i, 30_000) for i in range(100)]
    out = batches_of(events)
    assert all(len(b) <= MAX_BATCH_BYTES for b in out)
    assert [m for b in out for m in message_ids(b)] == [f"m{i}" for i in range(100)]
    assert all(orjson.loads(b)["integrations"] == {"Braze": False} for b in out)


def test_an_event_over_32kb_is_refused():
    with pytest.raises(ValueError, match="32768"):
        BatchBuilder().add(event(0, MAX_EVENT_BYTES))


def test_split_keeps_top_level_fields_and_order():
    body = batches_of([event(i) for i in range(5)])[0]
    first, second = split_body(body)
    assert message_ids(first) + message_ids(second) == [f"m{i}" for i in range(5)]
    assert orjson.loads(second)["integrations"] == {"Braze": False}
    assert split_body(first.replace(first, batches_of([event(9)])[0])) is None
