"""Dead letters: events and files that could not be sent, with enough to find and resend them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One event (or, with ``id`` None, a whole file) that was not sent.

    :param reason: a short machine-friendly reason, e.g. ``event_over_32kb``.
    :param key: the source object key.
    :param event_type: the Currents event type.
    :param id: the Currents event id; None when the whole file is dead-lettered.
    :param row: the record's position in the file (0-based), when known.
    :param detail: a human-readable explanation, free of personal data.
    """

    reason: str
    key: str
    event_type: str | None = None
    id: str | None = None
    row: int | None = None
    detail: str = ""
    at: str = dataclasses.field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))


def to_ndjson(letters: Iterable[DeadLetter]) -> bytes:
    """Serialise dead letters as NDJSON, one per line."""
    return b"".join(letter.to_json() + b"\n" for letter in letters)


def from_ndjson(data: bytes) -> list[DeadLetter]:
    """Parse NDJSON written by :func:`to_ndjson`."""
    return [DeadLetter(**orjson.loads(line)) for line in data.splitlines() if line.strip()]
