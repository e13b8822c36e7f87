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


@pytest.mark.parametrize("seed", range(6))
def test_extend_joined_cuts_the_same_bodies_as_extend(seed):
    import random

    rng = random.Random(seed)
    max_events = rng.choice([3, 37, 500, 2500])
    sizes = [rng.choice([10, 200, 2_000, 20_000, 32_000]) for _ in range(rng.randrange(50, 900))]
    events = [event(i, size) for i, size in enumerate(sizes)]
    one = BatchBuilder(integrations={"Braze": False}, max_events=max_events)
    other = BatchBuilder(integrations={"Braze": False}, max_events=max_events)
    expected, got = [], []
    start = 0
    while start < len(events):  # handed over in uneven runs, as files and batches come
        end = min(len(events), start + rng.randrange(1, 120))
        run = events[start:end]
        expected += one.extend(run)
        got += other.extend_joined(b"".join(e + b"," for e in run), [len(e) for e in run])
        assert other.closed_sizes == one.closed_sizes
        start = end
    expected.append(one.flush())
    got.append(other.flush())
    assert got == expected
    assert sum(len(message_ids(body)) for body in got) == len(events)


def test_extend_joined_refuses_an_event_over_32kb():
    big = event(0, MAX_EVENT_BYTES)
    with pytest.raises(ValueError, match="32768"):
        BatchBuilder().extend_joined(big + b",", [len(big)])


@pytest.mark.parametrize("over", [0, 1])
def test_extend_joined_fills_a_batch_to_the_last_byte_and_not_one_more(over):
    max_bytes = 60_000
    builder = BatchBuilder(integrations={"Braze": False}, max_bytes=max_bytes)
    base = len(event(0, 0))
    fill = max_bytes - len(builder.head) - len(builder.tail) - 3 - 4 * base + over  # 4 events, 3 commas
    events = [
        event(i, size) for i, size in enumerate([fill // 4, fill // 4, fill // 4, fill - 3 * (fill // 4)])
    ]
    events.append(event(4, 10))
    oracle = BatchBuilder(integrations={"Braze": False}, max_bytes=max_bytes)
    expected = oracle.extend(events)
    got = builder.extend_joined(b"".join(e + b"," for e in events), [len(e) for e in events])
    assert got == expected
    assert [len(message_ids(body)) for body in got] == ([4] if not over else [3])
    assert len(got[0]) == max_bytes if not over else len(got[0]) < max_bytes
