"""Cut serialised Segment messages into batch request bodies that stay inside Segment's limits."""

from __future__ import annotations

from collections.abc import Mapping
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
        self._events: list[bytes] = []
        self._size = len(self.head) + len(self.tail)

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: bytes) -> list[bytes]:
        """Add one serialised message; return the batches that adding it closed (usually none).

        :param event: a message serialised as JSON, at most :data:`MAX_EVENT_BYTES` long.
        """
        if len(event) > MAX_EVENT_BYTES:
            raise ValueError(f"event of {len(event)} bytes is over Segment's {MAX_EVENT_BYTES}-byte limit")
        closed = []
        if self._events and self._size + 1 + len(event) > self.max_bytes:
            closed.append(self.flush())
        self._size += len(event) + (1 if self._events else 0)
        self._events.append(event)
        if len(self._events) >= self.max_events:
            closed.append(self.flush())
        return closed

    def extend(self, events: list[bytes]) -> list[bytes]:
        """Add serialised messages in order, as :meth:`add` would; return the batches they closed.

        :param events: messages serialised as JSON, each at most :data:`MAX_EVENT_BYTES` long.
        """
        closed = []
        pending, size = self._events, self._size
        max_events, max_bytes = self.max_events, self.max_bytes
        for event in events:
            length = len(event)
            if length > MAX_EVENT_BYTES:
                raise ValueError(f"event of {length} bytes is over Segment's {MAX_EVENT_BYTES}-byte limit")
            if pending and size + 1 + length > max_bytes:
                closed.append(self.head + b",".join(pending) + self.tail)
                pending, size = [], len(self.head) + len(self.tail)
            size += length + (1 if pending else 0)
            pending.append(event)
            if len(pending) >= max_events:
                closed.append(self.head + b",".join(pending) + self.tail)
                pending, size = [], len(self.head) + len(self.tail)
        self._events, self._size = pending, size
        return closed

    def flush(self) -> bytes | None:
        """Return the pending batch, if any, and start a new one."""
        if not self._events:
            return None
        body = self.head + b",".join(self._events) + self.tail
        self._events = []
        self._size = len(self.head) + len(self.tail)
        return body


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
