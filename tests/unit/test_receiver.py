from __future__ import annotations

import gzip
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from braze_currents.receiver import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    Fault,
    SegmentReceiver,
)

WRITE_KEY = "test-write-key"
TIMEOUT = 5


def _event(index: int, **fields: Any) -> dict[str, Any]:
    event = {
        "type": "track",
        "userId": f"user-{index}",
        "event": "Email Opened",
        "messageId": f"msg-{index}",
        "timestamp": "2026-12-01T04:59:59.000Z",
        "properties": {"campaign": "winter"},
    }
    event.update(fields)
    return event


def _event_of_size(size: int, message_id: str) -> dict[str, Any]:
    event = _event(0, messageId=message_id, properties={"pad": ""})
    event["properties"]["pad"] = "x" * (size - len(orjson.dumps(event)))
    assert len(orjson.dumps(event)) == size
    return event


def _body_of_size(size: int, n_events: int = 20) -> bytes:
    events = [_event(i, properties={"pad": ""}) for i in range(n_events)]
    remaining = size - len(orjson.dumps({"batch": events}))
    for event in events:
        event["properties"]["pad"] = "x" * (remaining // n_events)
    events[-1]["properties"]["pad"] += "x" * (remaining % n_events)
    body = orjson.dumps({"batch": events})
    assert len(body) == size
    return body


def _post(
    receiver: SegmentReceiver,
    payload: Any = None,
    *,
    body: bytes | None = None,
    key: str | None = WRITE_KEY,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> requests.Response:
    return requests.post(
        receiver.batch_url,
        data=orjson.dumps(payload) if body is None else body,
        auth=(key, "") if key is not None else None,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=timeout,
    )


@pytest.fixture
def out_path(tmp_path: Path) -> Path:
    return tmp_path / "accepted.ndjson"


@pytest.fixture
def receiver(out_path: Path) -> Iterator[SegmentReceiver]:
    with SegmentReceiver(write_key=WRITE_KEY, out_path=out_path) as started:
        yield started


def test_valid_batch_is_appended_to_the_out_file_with_received_at(
    receiver: SegmentReceiver, out_path: Path
) -> None:
    response = _post(receiver, {"batch": [_event(1), _event(2, anonymousId="anon-2", userId=None)]})

    assert response.status_code == 200
    assert response.json() == {"success": True}
    lines = [orjson.loads(line) for line in out_path.read_bytes().splitlines()]
    assert [line["messageId"] for line in lines] == ["msg-1", "msg-2"]
    assert all(datetime.fromisoformat(line["receivedAt"]).tzinfo is not None for line in lines)
    assert receiver.accepted_ids() == {"msg-1", "msg-2"}
    assert receiver.accepted_messages() == lines
    assert receiver.stats()["accepted"] == 2


@pytest.mark.parametrize(
    ("key", "headers"),
    [
        ("wrong-key", {}),
        (None, {}),
        (None, {"Authorization": "Bearer " + WRITE_KEY}),
        (None, {"Authorization": "Basic not-base64!"}),
    ],
    ids=["wrong-key", "no-auth", "not-basic", "bad-base64"],
)
def test_wrong_or_missing_write_key_returns_401(
    receiver: SegmentReceiver, key: str | None, headers: dict[str, str]
) -> None:
    response = _post(receiver, {"batch": [_event(1)]}, key=key, headers=headers)

    assert response.status_code == 401
    assert response.json() == {"success": False, "code": "unauthorized"}
    assert receiver.stats()["unauthorized"] == 1
    assert receiver.accepted_ids() == set()


def test_write_key_in_the_body_is_accepted_without_an_auth_header(receiver: SegmentReceiver) -> None:
    response = _post(receiver, {"writeKey": WRITE_KEY, "batch": [_event(1)]}, key=None)

    assert response.status_code == 200
    assert receiver.accepted_ids() == {"msg-1"}


def test_auth_header_wins_over_a_correct_write_key_in_the_body(receiver: SegmentReceiver) -> None:
    response = _post(receiver, {"writeKey": WRITE_KEY, "batch": [_event(1)]}, key="wrong-key")

    assert response.status_code == 401


@pytest.mark.parametrize(("size", "status"), [(MAX_REQUEST_BYTES, 200), (MAX_REQUEST_BYTES + 1, 400)])
def test_body_limit_is_512000_bytes(receiver: SegmentReceiver, size: int, status: int) -> None:
    response = _post(receiver, body=_body_of_size(size))

    assert response.status_code == status
    assert len(receiver.accepted_ids()) == (20 if status == 200 else 0)
    if status == 400:
        assert response.json()["code"] == "body_too_large"


def test_body_far_over_the_limit_still_gets_a_400_not_a_reset(receiver: SegmentReceiver) -> None:
    response = _post(receiver, body=b"x" * (5 * MAX_REQUEST_BYTES))

    assert response.status_code == 400
    assert response.json()["code"] == "body_too_large"


@pytest.mark.parametrize(("size", "status"), [(MAX_EVENT_BYTES, 200), (MAX_EVENT_BYTES + 1, 400)])
def test_one_event_over_32_kb_rejects_the_whole_request_and_names_its_index(
    receiver: SegmentReceiver, size: int, status: int
) -> None:
    big = _event_of_size(size, message_id="big")
    response = _post(receiver, {"batch": [_event(1), _event(2), big]})

    assert response.status_code == status
    if status == 400:
        assert response.json()["code"] == "event_too_large"
        assert response.json()["index"] == 2
        assert receiver.accepted_ids() == set()
    else:
        assert receiver.accepted_ids() == {"msg-1", "msg-2", "big"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"batch": [', "invalid_json"),
        (b'{"batch": [{"type": "track", "properties": {"price": NaN}}]}', "invalid_json"),
        (b"", "invalid_json"),
        (b"[]", "invalid_body"),
        (b'{"batch": {}}', "invalid_body"),
        (b'{"events": []}', "invalid_body"),
    ],
    ids=["truncated", "nan", "empty", "list", "batch-not-list", "no-batch"],
)
def test_invalid_json_or_shape_returns_400(receiver: SegmentReceiver, body: bytes, code: str) -> None:
    response = _post(receiver, body=body)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert receiver.stats()["status_counts"] == {400: 1}


def test_over_2500_events_returns_200_and_drops_the_excess(receiver: SegmentReceiver) -> None:
    events = [{"type": "track", "userId": "u", "event": "E", "messageId": str(i)} for i in range(2_600)]

    response = _post(receiver, {"batch": events})

    assert response.status_code == 200
    assert receiver.accepted_ids() == {str(i) for i in range(MAX_BATCH_EVENTS)}
    stats = receiver.stats()
    assert stats["accepted"] == MAX_BATCH_EVENTS
    assert stats["dropped_over_limit"] == 100


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({k: v for k, v in _event(9).items() if k != "type"}, "missing_type"),
        (_event(9, type="purchase"), "invalid_type"),
        (_event(9, userId=None), "missing_identity"),
        (_event(9, userId="", anonymousId=""), "missing_identity"),
        (_event(9, userId=42), "missing_identity"),
        (_event(9, event=""), "missing_event"),
        ({k: v for k, v in _event(9).items() if k != "event"}, "missing_event"),
        (_event(9, messageId=None), "invalid_message_id"),
        (_event(9, messageId=123), "invalid_message_id"),
        (_event(9, messageId="m" * 100), "message_id_too_long"),
        (_event(9, timestamp="yesterday"), "invalid_timestamp"),
        (_event(9, timestamp=1_764_565_199), "invalid_timestamp"),
        ("not an event", "not_an_object"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.islower() else None,
)
def test_invalid_event_is_dropped_with_its_reason_counted_and_the_request_still_succeeds(
    receiver: SegmentReceiver, event: Any, reason: str
) -> None:
    response = _post(receiver, {"batch": [_event(1), event]})

    assert response.status_code == 200
    assert receiver.accepted_ids() == {"msg-1"}
    assert receiver.stats()["rejected"] == {reason: 1}


@pytest.mark.parametrize(
    "event",
    [
        _event(9, messageId="m" * 99),
        _event(9, type="identify", event=None, traits={"plan": "pro"}),
        _event(9, timestamp="2026-12-01T04:59:59+01:00"),
        {k: v for k, v in _event(9).items() if k != "timestamp"},
    ],
    ids=["99-char-message-id", "identify-without-event", "offset-timestamp", "no-timestamp"],
)
def test_events_at_the_edge_of_the_rules_are_accepted(receiver: SegmentReceiver, event: Any) -> None:
    response = _post(receiver, {"batch": [event]})

    assert response.status_code == 200
    assert receiver.accepted_ids() == {event["messageId"]}
    assert receiver.stats()["rejected"] == {}


def test_duplicate_message_ids_keep_the_first_copy_and_are_counted(receiver: SegmentReceiver) -> None:
    first = _event(1, properties={"copy": "first"})
    _post(receiver, {"batch": [first, _event(1, properties={"copy": "second"}), _event(2)]})
    response = _post(receiver, {"batch": [_event(1, properties={"copy": "third"})]})

    assert response.status_code == 200
    messages = receiver.accepted_messages()
    assert [m["messageId"] for m in messages] == ["msg-1", "msg-2"]
    assert messages[0]["properties"] == {"copy": "first"}
    assert receiver.stats()["duplicates"] == 2
    assert receiver.stats()["accepted"] == 2


def test_gzip_body_is_decompressed_before_parsing(receiver: SegmentReceiver) -> None:
    body = gzip.compress(orjson.dumps({"batch": [_event(1)]}))

    response = _post(receiver, body=body, headers={"Content-Encoding": "gzip"})

    assert response.status_code == 200
    assert receiver.accepted_ids() == {"msg-1"}


def test_gzip_body_limit_applies_to_the_decompressed_json(receiver: SegmentReceiver) -> None:
    body = gzip.compress(_body_of_size(MAX_REQUEST_BYTES + 1))
    assert len(body) < MAX_REQUEST_BYTES

    response = _post(receiver, body=body, headers={"Content-Encoding": "gzip"})

    assert response.status_code == 400
    assert response.json()["code"] == "body_too_large"


def test_invalid_gzip_returns_400(receiver: SegmentReceiver) -> None:
    response = _post(receiver, body=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_gzip"


def test_chunked_body_is_read_in_full(receiver: SegmentReceiver) -> None:
    body = orjson.dumps({"batch": [_event(1), _event(2)]})
    pieces = iter([body[:10], body[10:50], body[50:]])

    response = requests.post(receiver.batch_url, data=pieces, auth=(WRITE_KEY, ""), timeout=TIMEOUT)

    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200
    assert receiver.accepted_ids() == {"msg-1", "msg-2"}


def test_concurrent_requests_dedupe_exactly_and_write_every_accepted_event_once(
    receiver: SegmentReceiver, out_path: Path
) -> None:
    def send(offset: int) -> int:
        with requests.Session() as session:
            statuses = []
            for start in range(0, 100, 20):
                batch = [_event(offset + i) for i in range(start, start + 20)]
                body = orjson.dumps({"batch": batch})
                response = session.post(receiver.batch_url, data=body, auth=(WRITE_KEY, ""), timeout=TIMEOUT)
                statuses.append(response.status_code)
            return statuses.count(200)

    # Eight senders, half over ids 0-99 and half over 50-149: 150 distinct ids in 800 events.
    with ThreadPoolExecutor(max_workers=8) as pool:
        successes = list(pool.map(send, [0, 50] * 4))

    assert successes == [5] * 8
    assert receiver.accepted_ids() == {f"msg-{i}" for i in range(150)}
    assert receiver.stats()["duplicates"] == 8 * 100 - 150
    assert len(out_path.read_bytes().splitlines()) == 150


def test_top_level_context_and_integrations_are_merged_under_the_events_own(
    receiver: SegmentReceiver,
) -> None:
    payload = {
        "context": {"library": {"name": "braze-currents-segment"}, "ip": "0.0.0.0"},
        "integrations": {"Braze": False},
        "batch": [
            _event(1, context={"ip": "10.0.0.1", "traits": {"email": "a@example.com"}}),
            _event(2, integrations={"Braze": True, "All": True}),
        ],
    }

    response = _post(receiver, payload)

    assert response.status_code == 200
    first, second = receiver.accepted_messages()
    assert first["context"] == {
        "library": {"name": "braze-currents-segment"},
        "ip": "10.0.0.1",
        "traits": {"email": "a@example.com"},
    }
    assert first["integrations"] == {"Braze": False}
    assert second["context"] == {"library": {"name": "braze-currents-segment"}, "ip": "0.0.0.0"}
    assert second["integrations"] == {"Braze": True, "All": True}


def test_injected_429_sends_retry_after_once_then_requests_succeed(receiver: SegmentReceiver) -> None:
    receiver.inject(Fault(status=429, retry_after=1.0))

    limited = _post(receiver, {"batch": [_event(1)]})
    retried = _post(receiver, {"batch": [_event(1)]})

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert retried.status_code == 200
    assert receiver.accepted_ids() == {"msg-1"}
    assert receiver.stats()["status_counts"] == {429: 1, 200: 1}
    assert receiver.stats()["requests"] == 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_injected_server_error_answers_the_next_times_requests(
    receiver: SegmentReceiver, status: int
) -> None:
    receiver.inject(Fault(status=status, times=2))

    statuses = [_post(receiver, {"batch": [_event(1)]}).status_code for _ in range(3)]

    assert statuses == [status, status, 200]
    assert receiver.pending_faults() == []
    assert receiver.stats()["accepted"] == 1


def test_faults_are_applied_in_the_order_they_were_queued(receiver: SegmentReceiver) -> None:
    receiver.inject(Fault(status=503), Fault(status=429, retry_after=0.5))

    statuses = [_post(receiver, {"batch": [_event(1)]}) for _ in range(3)]

    assert [r.status_code for r in statuses] == [503, 429, 200]
    assert statuses[1].headers["Retry-After"] == "0.5"


def test_delay_fault_outlasts_a_shorter_client_timeout(receiver: SegmentReceiver) -> None:
    receiver.inject(Fault(delay=0.3))

    with pytest.raises(requests.exceptions.ReadTimeout):
        _post(receiver, {"batch": [_event(1)]}, timeout=0.05)
    assert receiver.stats()["requests"] == 1


def test_delay_fault_answers_late_and_then_processes_normally(receiver: SegmentReceiver) -> None:
    receiver.inject(Fault(delay=0.15))

    started = time.monotonic()
    response = _post(receiver, {"batch": [_event(1)]})

    assert time.monotonic() - started >= 0.15
    assert response.status_code == 200
    assert receiver.accepted_ids() == {"msg-1"}


def test_drop_connection_fault_raises_connection_error_and_is_counted(receiver: SegmentReceiver) -> None:
    receiver.inject(Fault(drop_connection=True))

    with pytest.raises(requests.exceptions.ConnectionError):
        _post(receiver, {"batch": [_event(1)]})
    response = _post(receiver, {"batch": [_event(1)]})

    assert response.status_code == 200
    stats = receiver.stats()
    assert stats["requests"] == 2
    assert stats["connections_dropped"] == 1
    assert stats["accepted"] == 1


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"status": 200},
        {"status": "503"},
        {"retry_after": 1.0},
        {"status": 500, "times": 0},
        {"delay": -1},
        {"status": 500, "drop_connection": True},
    ],
    ids=[
        "nothing",
        "success-status",
        "string-status",
        "retry-after-alone",
        "zero-times",
        "negative-delay",
        "both",
    ],
)
def test_fault_refuses_settings_that_cannot_be_served(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fault(**fields)


def test_control_endpoints_queue_faults_rotate_the_key_and_reset(receiver: SegmentReceiver) -> None:
    queued = requests.post(
        receiver.url + "/_control/faults", json=[{"status": 503, "times": 5}], timeout=TIMEOUT
    )
    assert queued.status_code == 200
    assert queued.json()["queued"] == 1
    assert _post(receiver, {"batch": [_event(1)]}).status_code == 503

    assert requests.post(receiver.url + "/_control/reset", timeout=TIMEOUT).status_code == 200
    assert _post(receiver, {"batch": [_event(1)]}).status_code == 200

    rotated = requests.post(
        receiver.url + "/_control/write_key", json={"write_key": "new-key"}, timeout=TIMEOUT
    )
    assert rotated.status_code == 200
    assert WRITE_KEY not in rotated.text
    assert _post(receiver, {"batch": [_event(2)]}).status_code == 401
    assert _post(receiver, {"batch": [_event(2)]}, key="new-key").status_code == 200


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/_control/faults", [{"status": 503, "when": "now"}]),
        ("/_control/faults", {"status": 503}),
        ("/_control/write_key", {"write_key": ""}),
    ],
    ids=["unknown-fault-field", "not-a-list", "empty-key"],
)
def test_control_endpoints_reject_malformed_requests(
    receiver: SegmentReceiver, path: str, payload: Any
) -> None:
    response = requests.post(receiver.url + path, json=payload, timeout=TIMEOUT)

    assert response.status_code == 400
    assert receiver.pending_faults() == []
    assert _post(receiver, {"batch": [_event(1)]}).status_code == 200


def test_set_write_key_makes_the_old_key_unauthorized_midway(receiver: SegmentReceiver) -> None:
    before = _post(receiver, {"batch": [_event(1)]})
    receiver.set_write_key("rotated-key")
    after = _post(receiver, {"batch": [_event(2)]})

    assert (before.status_code, after.status_code) == (200, 401)
    assert receiver.accepted_ids() == {"msg-1"}
    assert receiver.stats()["unauthorized"] == 1


def test_stats_endpoint_needs_no_auth_and_matches_stats(receiver: SegmentReceiver) -> None:
    _post(receiver, {"batch": [_event(1), _event(1)]})
    _post(receiver, {"batch": [_event(2)]}, key="wrong-key")

    response = requests.get(receiver.url + "/_stats", timeout=TIMEOUT)

    assert response.status_code == 200
    assert response.json() == {
        "requests": 2,
        "accepted": 1,
        "duplicates": 1,
        "dropped_over_limit": 0,
        "rejected": {},
        "status_counts": {"200": 1, "401": 1},
        "unauthorized": 1,
        "connections_dropped": 0,
    }


def test_arrivals_record_each_request_with_its_event_count(receiver: SegmentReceiver) -> None:
    receiver.inject(Fault(status=500))
    for count in (1, 2, 3):
        _post(receiver, {"batch": [_event(i) for i in range(count)]})

    arrivals = receiver.arrivals()

    assert [n for _, n in arrivals] == [1, 2, 3]
    times = [t for t, _ in arrivals]
    assert times == sorted(times)
    assert times[-1] <= time.monotonic()


def test_restarted_receiver_still_dedupes_ids_already_in_its_out_file(out_path: Path) -> None:
    with SegmentReceiver(write_key=WRITE_KEY, out_path=out_path) as first:
        _post(first, {"batch": [_event(1)]})
    with SegmentReceiver(write_key=WRITE_KEY, out_path=out_path) as second:
        _post(second, {"batch": [_event(1), _event(2)]})

        assert second.stats()["duplicates"] == 1
        assert [m["messageId"] for m in second.accepted_messages()] == ["msg-1", "msg-2"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com"])
def test_receiver_refuses_to_bind_anything_but_loopback(out_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        SegmentReceiver(write_key=WRITE_KEY, out_path=out_path, host=host)


def test_unknown_path_returns_404(receiver: SegmentReceiver) -> None:
    response = requests.post(
        receiver.url + "/v1/track", json=_event(1), auth=(WRITE_KEY, ""), timeout=TIMEOUT
    )

    assert response.status_code == 404
    assert receiver.stats()["requests"] == 0


def _read_line(stream: Any, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    return stream.readline()


def test_cli_serves_in_a_subprocess_until_terminated(tmp_path: Path, out_path: Path) -> None:
    env = {**os.environ, "RECEIVER_TEST_KEY": WRITE_KEY}
    command = [sys.executable, "-m", "braze_currents.receiver", "--port", "0", "--out", str(out_path)]
    proc = subprocess.Popen(
        [*command, "--write-key-env", "RECEIVER_TEST_KEY"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc.stdout, timeout=10)
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]

        response = requests.post(
            url + "/v1/batch", json={"batch": [_event(1)]}, auth=(WRITE_KEY, ""), timeout=5
        )
        stats = requests.get(url + "/_stats", timeout=5).json()

        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert response.status_code == 200
    assert stats["accepted"] == 1
    assert orjson.loads(out_path.read_bytes())["messageId"] == "msg-1"
    assert proc.returncode == 0
    assert "stopped after 1 requests, 1 events accepted" in stdout
    assert WRITE_KEY not in line + stdout + stderr


def test_cli_refuses_an_unset_write_key_variable(out_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RECEIVER_TEST_KEY"}
    command = [sys.executable, "-m", "braze_currents.receiver", "--out", str(out_path)]
    result = subprocess.run(
        [*command, "--write-key-env", "RECEIVER_TEST_KEY"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )

    assert result.returncode == 2
    assert "RECEIVER_TEST_KEY" in result.stderr
