"""Cut serialised Segment messages into batch request bodies that stay inside Segment's limits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

MAX_BATCH_EVENTS = 2500
# Segment refuses requests over 500 KB; its own Python library closes a batch at 475,000 bytes.
MAX_BATCH_BYTES = 475_000
MAX_EVENT_BYTES = 32 * 1024


class BatchBuilder:
    """Collect serialised messages and hand out a complete request body whenever one is full.

    :param integrations: the top-level ``integrations`` object of every batch.
    :param max_events: most events in one batch.
    :param max_bytes: most bytes of JSON in one request body.
    """

    def __init__(
        self,
        *,
        integrations: Mapping[str, Any] | None = None,
        max_events: int = MAX_BATCH_EVENTS,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if not 1 <= max_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_events must be between 1 and {MAX_BATCH_EVENTS}, got {max_events}")
        self.head = b'{"batch":['
        self.tail = b"]" + (b',"integrations":' + orjson.dumps(dict(integrations)) if integrations else b"")
        self.tail += b"}"
        self.max_events = max_events
        self.max_bytes = max_bytes
        if len(self.head) + len(self.tail) + MAX_EVENT_BYTES > max_bytes:
            raise ValueError(f"max_bytes {max_bytes} leaves no room for a {MAX_EVENT_BYTES}-byte event")
        # The open batch is built in one buffer: each event is copied in and can be freed at once
        # (orjson hands out its output with a buffer of several kilobytes, whatever the JSON's length).
        self._body = bytearray(self.head)
        self._events = 0

    def __len__(self) -> int:
        return self._events

    def add(self, event: bytes) -> list[bytes]:
        """Add one serialised message; return the batches that adding it closed (usually none).

        :param event: a message serialised as JSON, at most :data:`MAX_EVENT_BYTES` long.
        """
        return self.extend([event])

    def extend(self, events: Iterable[bytes]) -> list[bytes]:
        """Add serialised messages in order; return the batches they closed.

        :param events: messages serialised as JSON, each at most :data:`MAX_EVENT_BYTES` long.
        """
        closed = []
        body, count = self._body, self._events
        # Room for the events and commas, once the tail is added.
        room = self.max_bytes - len(self.tail)
        try:
            for event in events:
                length = len(event)
                if length > MAX_EVENT_BYTES:
                    raise ValueError(
                        f"event of {length} bytes is over Segment's {MAX_EVENT_BYTES}-byte limit"
                    )
                if count and len(body) + 1 + length > room:
                    closed.append(self._close(body))
                    body, count = self._body, 0
                if count:
                    body += b","
                body += event
                count += 1
                if count >= self.max_events:
                    closed.append(self._close(body))
                    body, count = self._body, 0
        finally:
            self._events = count
        return closed

    def _close(self, body: bytearray) -> bytes:
        body += self.tail
        self._body = bytearray(self.head)
        self._events = 0
        return bytes(body)

    def flush(self) -> bytes | None:
        """Return the pending batch, if any, and start a new one."""
        if not self._events:
            return None
        return self._close(self._body)


def split_body(body: bytes) -> tuple[bytes, bytes] | None:
    """Split a batch body into two halves with the same top-level fields; None for a single event."""
    document = orjson.loads(body)
    events = document["batch"]
    if len(events) < 2:
        return None
    middle = len(events) // 2
    first = {**document, "batch": events[:middle]}
    second = {**document, "batch": events[middle:]}
    return orjson.dumps(first), orjson.dumps(second)


def message_ids(body: bytes) -> list[str]:
    """Return the messageIds of a batch body, in order."""
    return [event.get("messageId") for event in orjson.loads(body)["batch"]]
