"""The retry policy, exercised against the local Segment-compatible receiver."""

from __future__ import annotations

import orjson
import pytest

from braze_currents.receiver import Fault, SegmentReceiver
from braze_currents.segment_client import (
    RetryPolicy,
    SegmentAuthError,
    SegmentClient,
    SegmentRejectedError,
    SegmentUnavailableError,
    endpoint_for,
)

KEY = "unit-test-key"


def body(*ids: str) -> bytes:
    events = [{"type": "track", "userId": "u", "event": "E", "messageId": i} for i in ids]
    return orjson.dumps({"batch": events})


@pytest.fixture
def receiver(tmp_path):
    with SegmentReceiver(write_key=KEY, out_path=tmp_path / "accepted.ndjson").start() as running:
        yield running


@pytest.fixture
def waits():
    return []


@pytest.fixture
def client(receiver, waits):
    made = SegmentClient(
        endpoint=receiver.url + "/v1/batch",
        write_key=KEY,
        sleep=waits.append,
        timeout=(2.0, 0.5),
        policy=RetryPolicy(max_attempts=4, jitter=0.0),
    )
    yield made
    made.close()


def test_429_waits_for_retry_after_then_delivers(receiver, client, waits):
    receiver.inject(Fault(status=429, retry_after=3, times=2))
    assert client.send(body("a")) == 3
    assert waits == [3.0, 3.0]
    assert receiver.accepted_ids() == {"a"}


def test_5xx_backs_off_exponentially(receiver, client, waits):
    receiver.inject(Fault(status=500), Fault(status=502), Fault(status=503))
    assert client.send(body("a")) == 4
    assert waits == [0.5, 1.0, 2.0]


def test_dropped_connections_and_slow_answers_are_retried(receiver, client):
    receiver.inject(Fault(drop_connection=True), Fault(delay=1.0))
    assert client.send(body("a")) == 3
    assert receiver.accepted_ids() == {"a"}


def test_401_fails_at_once_without_retrying(receiver, client, waits):
    receiver.set_write_key("another-key")
    with pytest.raises(SegmentAuthError):
        client.send(body("a"))
    assert waits == []
    assert receiver.stats()["requests"] == 1


def test_400_is_never_retried_unchanged(receiver, client, waits):
    huge = orjson.dumps(
        {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "x", "p": "y" * 40_000}]}
    )
    with pytest.raises(SegmentRejectedError) as info:
        client.send(huge)
    assert info.value.status == 400
    assert waits == []


def test_retries_are_bounded(receiver, client):
    receiver.inject(Fault(status=503, times=10))
    with pytest.raises(SegmentUnavailableError, match="4 attempts"):
        client.send(body("a"))
    assert receiver.stats()["requests"] == 4


def test_the_write_key_is_not_in_the_client_repr(client):
    assert KEY not in repr(client)


@pytest.mark.parametrize(
    ("region", "host", "expected"),
    [
        ("us", None, "https://api.segment.io/v1/batch"),
        ("eu", None, "https://events.eu1.segmentapis.com/v1/batch"),
        ("us", "http://127.0.0.1:9000", "http://127.0.0.1:9000/v1/batch"),
    ],
)
def test_endpoints_by_region_or_host(region, host, expected):
    assert endpoint_for(region=region, host=host) == expected


def test_an_unknown_region_is_refused():
    with pytest.raises(ValueError, match="region"):
        endpoint_for(region="apac")


def test_a_proxy_set_in_the_environment_carries_the_requests(receiver, monkeypatch):
    # The receiver answers an absolute-URL request line as a forward proxy would pass it on.
    monkeypatch.setenv("HTTP_PROXY", receiver.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = SegmentClient(
        endpoint="http://segment.example.invalid/v1/batch", write_key=KEY, policy=RetryPolicy(max_attempts=1)
    )
    try:
        proxied.send(body("through-proxy"))
    finally:
        proxied.close()
    assert "through-proxy" in receiver.accepted_ids()
