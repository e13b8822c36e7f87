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
        # The number of events of each batch closed so far, in order; a caller may pop them.
        self.closed_sizes: list[int] = []

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
                    closed.append(self._close(body, count))
                    body, count = self._body, 0
                if count:
                    body += b","
                body += event
                count += 1
                if count >= self.max_events:
                    closed.append(self._close(body, count))
                    body, count = self._body, 0
        finally:
            self._events = count
        return closed

    def extend_joined(self, joined: bytes | memoryview, lengths: Any) -> list[bytes]:
        """:meth:`extend` for messages handed over as one buffer: each followed by a comma, in order.

        The same bodies come out as from :meth:`extend`, but a run of messages is copied into the open
        batch in one slice, so the cost is per batch rather than per message.

        :param joined: the messages, each followed by ``,`` (a memoryview saves copying slices).
        :param lengths: each message's length without its comma (a sequence or numpy array).
        """
        import numpy as np

        lengths = np.asarray(lengths, dtype=np.int64)
        if not len(lengths):
            return []
        if int(lengths.max()) > MAX_EVENT_BYTES:
            length = int(lengths.max())
            raise ValueError(f"event of {length} bytes is over Segment's {MAX_EVENT_BYTES}-byte limit")
        ends = np.cumsum(lengths + 1)  # where each message's comma ends in ``joined``
        starts = (ends - lengths - 1).tolist()
        room = self.max_bytes - len(self.tail)
        closed = []
        first, total = 0, len(lengths)
        while first < total:
            body, count = self._body, self._events
            # Messages first..last fit while the body, a comma before them if it holds any, and the
            # messages with the commas between them stay within room.
            limit = room - len(body) - (1 if count else 0) + 1 + starts[first]
            last = int(np.searchsorted(ends, limit, side="right"))
            last = min(last, first + self.max_events - count, total)
            if last <= first:
                if count:  # the next message does not fit beside the open batch's
                    closed.append(self._close(body, count))
                    continue
                last = first + 1  # an empty batch takes any message (the limits leave room for one)
            if count:
                body += b","
            body += joined[starts[first] : int(ends[last - 1]) - 1]
            self._events = count = count + last - first
            first = last
            if count >= self.max_events:
                closed.append(self._close(body, count))
        return closed

    def _close(self, body: bytearray, count: int) -> bytes:
        self.closed_sizes.append(count)
        body += self.tail
        self._body = bytearray(self.head)
        self._events = 0
        return bytes(body)

    def flush(self) -> bytes | None:
        """Return the pending batch, if any, and start a new one."""
        if not self._events:
            return None
        return self._close(self._body, self._events)


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
