"""Turn a window's Currents objects into staged chunks of Segment batch request bodies.

The steps, each counted: decode every object, filter with pandas (selected event types, events
without an external user id, repeated ids), map each kept event to a ``track`` message, cut
size-safe batches and write them, a chunk at a time, to the staging location.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from braze_currents.batching import MAX_EVENT_BYTES, BatchBuilder
from braze_currents.deadletters import DeadLetter
from braze_currents.mapping import EventMapping, build_message, integration_context
from braze_currents.reader import DecodeError, ListedObject, decode
from braze_currents.storage import Store

log = logging.getLogger(__name__)

# Reasons an event is dropped on purpose (not a loss: the report counts each one).
DROP_NOT_SELECTED = "event_type_not_selected"
DROP_NO_EXTERNAL_ID = "missing_external_user_id"
DROP_DUPLICATE = "duplicate_id"
DROP_ALREADY_SENT = "already_sent"


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """What shapes the prepared batches.

    :param event_types: the event types to send; others are dropped and counted.
    :param message_id_prefix: prepended to each Currents id to form the messageId.
    :param integrations: the top-level ``integrations`` object of every batch.
    :param chunk_events: about how many events one chunk (one upload task) holds.
    :param max_batch_events: most events in one request.
    :param max_batch_bytes: most bytes in one request body.
    """

    event_types: frozenset[str]
    message_id_prefix: str = ""
    integrations: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"Braze": False})
    chunk_events: int = 50_000
    max_batch_events: int = 2500
    max_batch_bytes: int = 475_000


@dataclasses.dataclass
class StagedChunk:
    """A chunk written to staging: what an upload task needs, small enough for XCom."""

    chunk_id: str
    name: str
    events: int
    batches: int
    bytes: int
    event_types: list[str]

    def label(self) -> str:
        first, last = self.event_types[0], self.event_types[-1]
        types = first if first == last else f"{first} .. {last}"
        return f"{self.chunk_id.split('-')[0]} {types}"


@dataclasses.dataclass
class PrepareResult:
    """Counts and chunks of one prepared window."""

    chunks: list[StagedChunk] = dataclasses.field(default_factory=list)
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    files: int = 0
    files_failed: int = 0
    events_read: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    staged_events: int = 0
    source_files: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def dead_lettered(self) -> int:
        return sum(1 for letter in self.dead_letters if letter.id is not None)


class _ChunkWriter:
    """Gather batches and their sources; write a chunk to staging once it holds enough events."""

    def __init__(self, staging: Store, folder: str, settings: PrepareSettings, result: PrepareResult) -> None:
        self.staging, self.folder, self.settings, self.result = staging, folder, settings, result
        self.builder = BatchBuilder(
            integrations=settings.integrations,
            max_events=settings.max_batch_events,
            max_bytes=settings.max_batch_bytes,
        )
        self._reset()

    def _reset(self) -> None:
        self.bodies: list[bytes] = []
        self.sources: list[tuple[int, int]] = []
        self.files: dict[str, int] = {}
        self.types: list[str] = []
        self.digest = hashlib.blake2b(digest_size=8)
        self.events = 0

    def add(self, event: bytes, message_id: str, key: str, row: int, event_type: str) -> None:
        file_index = self.files.setdefault(key, len(self.files))
        self.sources.append((file_index, row))
        if not self.types or self.types[-1] != event_type:
            self.types.append(event_type)
        self.digest.update(message_id.encode())
        self.events += 1
        self.bodies.extend(self.builder.add(event))
        if self.events >= self.settings.chunk_events:
            self.close()

    def close(self) -> None:
        self.bodies.extend(body for body in [self.builder.flush()] if body)
        if not self.bodies:
            return
        sequence = len(self.result.chunks)
        chunk_id = f"{sequence:04d}-{self.digest.hexdigest()}"
        name = f"{self.folder}/chunk-{chunk_id}.ndjson"
        data = b"\n".join(self.bodies) + b"\n"
        self.staging.put(name, data)
        sources = {"files": list(self.files), "events": self.sources}
        self.staging.put(f"{self.folder}/chunk-{chunk_id}.sources.json", orjson.dumps(sources))
        self.result.chunks.append(
            StagedChunk(chunk_id, name, self.events, len(self.bodies), len(data), list(self.types))
        )
        self.result.staged_events += self.events
        self._reset()


def _frame_filter(records: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Return (external ids stripped, keep mask) for a file's records, using pandas."""
    import pandas as pd

    external = pd.Series([r.get("external_user_id") for r in records], dtype="str")
    stripped = external.str.strip()
    has_external = stripped.notna() & stripped.ne("")
    return stripped, has_external


def prepare_window(
    objects: Iterable[ListedObject],
    fetch: Callable[[str], bytes],
    *,
    mapping: EventMapping,
    settings: PrepareSettings,
    staging: Store,
    folder: str,
    seen_ids: set[str] | None = None,
) -> PrepareResult:
    """Decode, filter, map and batch a window's objects into staged chunks.

    :param objects: the listed objects of the window, in a stable order.
    :param fetch: returns an object's bytes by key.
    :param mapping: the event mapping.
    :param settings: batching and filtering settings.
    :param staging: where chunks are written.
    :param folder: the window's folder inside ``staging``.
    :param seen_ids: messageIds the ledger records as delivered; such events are dropped as
        ``already_sent``, so a rerun never sends an event twice.
    """
    result = PrepareResult()
    writer = _ChunkWriter(staging, folder, settings, result)
    integration = integration_context()
    already_sent = seen_ids or set()
    seen: set[str] = set()
    seen_add = seen.add
    dumps = orjson.dumps

    for listed in objects:
        key, event_type = listed.key, listed.event_type
        result.files += 1
        try:
            decoded = decode(fetch(key), key)
        except DecodeError as exc:
            result.files_failed += 1
            result.dead_letters.append(DeadLetter("undecodable_file", key, event_type, detail=str(exc)))
            log.warning("Dead-lettered %s: %s", key, exc)
            result.source_files.append({"key": key, "etag": listed.etag, "size": listed.size, "read": 0})
            continue
        records = decoded.records
        if decoded.error:
            result.files_failed += 1
            result.dead_letters.append(DeadLetter("truncated_file", key, event_type, detail=decoded.error))
        result.events_read += len(records)
        source = {"key": key, "etag": listed.etag, "size": listed.size, "read": len(records)}
        result.source_files.append(source)

        if event_type not in settings.event_types:
            result.dropped[DROP_NOT_SELECTED] += len(records)
            continue
        spec = mapping.spec(event_type)
        user_ids, has_external = _frame_filter(records)

        for row, (record, keep, user_id) in enumerate(
            zip(records, has_external.tolist(), user_ids.tolist(), strict=True)
        ):
            event_id = record.get("id")
            if not isinstance(event_id, str) or not event_id:
                result.dead_letters.append(DeadLetter("missing_id", key, event_type, "", row))
                continue
            if not keep:
                result.dropped[DROP_NO_EXTERNAL_ID] += 1
                continue
            if event_id in seen:
                result.dropped[DROP_DUPLICATE] += 1
                continue
            seen_add(event_id)
            if already_sent and settings.message_id_prefix + event_id in already_sent:
                result.dropped[DROP_ALREADY_SENT] += 1
                continue
            try:
                message = build_message(
                    record,
                    spec,
                    user_id=user_id,
                    message_id_prefix=settings.message_id_prefix,
                    integration=integration,
                )
                event = dumps(message)
            except (ValueError, TypeError, OverflowError, orjson.JSONEncodeError) as exc:
                result.dead_letters.append(
                    DeadLetter("unmappable_event", key, event_type, event_id, row, str(exc))
                )
                continue
            if len(event) > MAX_EVENT_BYTES:
                detail = f"{len(event)} bytes as JSON; Segment's limit is {MAX_EVENT_BYTES}"
                result.dead_letters.append(
                    DeadLetter("event_over_32kb", key, event_type, event_id, row, detail)
                )
                continue
            writer.add(event, message["messageId"], key, row, event_type)

    writer.close()
    return result
