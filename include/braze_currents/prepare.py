"""Turn a window's Currents objects into staged chunks of Segment batch request bodies.

The steps, each counted: decode every object, filter with pandas (selected event types, events
without an external user id, repeated ids), map each kept event to a ``track`` message, cut
size-safe batches and write them, a chunk at a time, to the staging location.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from braze_currents.batching import MAX_EVENT_BYTES, BatchBuilder
from braze_currents.deadletters import DeadLetter
from braze_currents.filtering import (
    ALREADY_SENT,
    DUPLICATE,
    MISSING_ID,
    NO_EXTERNAL_ID,
    SEND,
    SeenIds,
    select_rows,
)
from braze_currents.filters import EventFilters
from braze_currents.mapping import EventMapping, MessageBuilder, integration_context
from braze_currents.reader import DecodeError, ListedObject, RecordBatches
from braze_currents.storage import Store

log = logging.getLogger(__name__)

# Reasons an event is dropped on purpose (not a loss: the report counts each one).
DROP_NOT_SELECTED = "event_type_not_selected"
DROP_NO_EXTERNAL_ID = "missing_external_user_id"
DROP_DUPLICATE = "duplicate_id"
DROP_ALREADY_SENT = "already_sent"
_HAND_OVER_EVENTS = 256
_DROP_REASONS = (
    (NO_EXTERNAL_ID, DROP_NO_EXTERNAL_ID),
    (DUPLICATE, DROP_DUPLICATE),
    (ALREADY_SENT, DROP_ALREADY_SENT),
)


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """What shapes the prepared batches.

    :param event_types: the event types to send; others are dropped and counted.
    :param message_id_prefix: prepended to each Currents id to form the messageId.
    :param integrations: the top-level ``integrations`` object of every batch.
    :param chunk_events: about how many events one chunk (one upload task) holds.
    :param max_batch_events: most events in one request.
    :param max_batch_bytes: most bytes in one request body.
    :param filters: the Current's event filters; each event they hold back is counted by filter.
    :param anonymous: send events without an external user id under ``anonymousId`` (Braze user id).
    """

    event_types: frozenset[str]
    message_id_prefix: str = ""
    integrations: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"Braze": False})
    chunk_events: int = 50_000
    max_batch_events: int = 2500
    max_batch_bytes: int = 475_000
    filters: EventFilters = dataclasses.field(default_factory=EventFilters)
    anonymous: bool = False


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
    files_listed_twice: int = 0
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
        # Bodies go straight into one buffer (getvalue() hands it over without a copy), so a full chunk
        # sits in memory once rather than as bodies plus their joined copy.
        self.data = io.BytesIO()
        self.batches = 0
        # (file index, row) per event, as numpy blocks: a tuple per event would scatter small objects
        # across the heap for the life of the chunk.
        self.sources: list[Any] = []
        self.files: dict[str, int] = {}
        self.types: list[str] = []
        self.digest = hashlib.blake2b(digest_size=8)
        self.events = 0

    def add_many(
        self, events: list[bytes], message_ids: list[str], key: str, rows: list[int], event_type: str
    ) -> None:
        """Add serialised events of one file in order; a chunk is written each time it is full."""
        import numpy as np

        start = 0
        while start < len(events):
            end = start + min(len(events) - start, self.settings.chunk_events - self.events)
            file_index = self.files.setdefault(key, len(self.files))
            self.sources.append(np.column_stack((np.full(end - start, file_index), rows[start:end])))
            if not self.types or self.types[-1] != event_type:
                self.types.append(event_type)
            # Hashing joined ids gives the same digest as hashing them one by one, at a fraction of the cost.
            self.digest.update("".join(message_ids[start:end]).encode())
            self._write(self.builder.extend(events[start:end]))
            self.events += end - start
            if self.events >= self.settings.chunk_events:
                self.close()
            start = end

    def _write(self, bodies: list[bytes]) -> None:
        for body in bodies:
            self.data.write(body)
            self.data.write(b"\n")
        self.batches += len(bodies)

    def close(self) -> None:
        last = self.builder.flush()
        if last:
            self._write([last])
        if not self.batches:
            return
        import numpy as np

        sequence = len(self.result.chunks)
        chunk_id = f"{sequence:04d}-{self.digest.hexdigest()}"
        name = f"{self.folder}/chunk-{chunk_id}.ndjson"
        data = self.data.getvalue()
        self.staging.put(name, data)
        sources = {"files": list(self.files), "events": np.concatenate(self.sources)}
        self.staging.put(
            f"{self.folder}/chunk-{chunk_id}.sources.json",
            orjson.dumps(sources, option=orjson.OPT_SERIALIZE_NUMPY),
        )
        self.result.chunks.append(
            StagedChunk(chunk_id, name, self.events, self.batches, len(data), list(self.types))
        )
        self.result.staged_events += self.events
        self._reset()


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
    seen = SeenIds()
    dumps = orjson.dumps

    # Per-file outcome counts for the ledger, taken as differences of the window's counters.
    marks: dict[str, Any] = {}

    def close_file() -> None:
        if not marks:
            return
        source = result.source_files[-1]
        dropped = {k: n - marks["dropped"].get(k, 0) for k, n in result.dropped.items()}
        source["dropped"] = {k: n for k, n in dropped.items() if n}
        source["dead_lettered"] = sum(
            1 for letter in result.dead_letters[marks["letters"] :] if letter.id is not None
        )
        source["staged"] = source["read"] - sum(source["dropped"].values()) - source["dead_lettered"]
        marks.clear()

    keys: set[str] = set()
    for listed in objects:
        close_file()
        if listed.key in keys:  # listed twice: read it once, so no event is counted twice
            result.files_listed_twice += 1
            continue
        keys.add(listed.key)
        marks.update(dropped=Counter(result.dropped), letters=len(result.dead_letters))
        key, event_type = listed.key, listed.event_type
        result.files += 1
        try:
            batches = RecordBatches(fetch(key), key)
        except DecodeError as exc:
            result.files_failed += 1
            result.dead_letters.append(DeadLetter("undecodable_file", key, event_type, detail=str(exc)))
            log.warning("Dead-lettered %s: %s", key, exc)
            result.source_files.append({"key": key, "etag": listed.etag, "size": listed.size, "read": 0})
            continue
        source = {"key": key, "etag": listed.etag, "size": listed.size, "read": 0}
        result.source_files.append(source)
        selected = event_type in settings.event_types
        if selected:
            build = MessageBuilder(
                mapping.spec(event_type),
                message_id_prefix=settings.message_id_prefix,
                integration=integration,
            ).build

        # A batch at a time: pandas decides each row's fate, then only the rows to send are mapped.
        first_row = 0
        for records in batches:
            result.events_read += len(records)
            source["read"] += len(records)
            if not selected:
                result.dropped[DROP_NOT_SELECTED] += len(records)
                continue
            selection = select_rows(
                records,
                seen,
                already_sent=already_sent,
                message_id_prefix=settings.message_id_prefix,
                anonymous=settings.anonymous,
            )
            for row in selection.rows(MISSING_ID):
                result.dead_letters.append(DeadLetter("missing_id", key, event_type, "", first_row + row))
            for outcome, reason in _DROP_REASONS:
                count = selection.count(outcome)
                if count:
                    result.dropped[reason] += count
            user_ids = selection.user_ids
            send = selection.rows(SEND)
            if settings.filters:
                send, held = settings.filters.apply(records, send, event_type)
                result.dropped.update(held)
            # A slice at a time: orjson's output holds a buffer of several kilobytes until the batch
            # builder has copied it, so events are handed over often rather than held for the whole batch.
            for start in range(0, len(send), _HAND_OVER_EVENTS):
                events: list[bytes] = []
                message_ids: list[str] = []
                rows: list[int] = []
                for row in send[start : start + _HAND_OVER_EVENTS]:
                    record = records[row]
                    try:
                        user_id = user_ids[row]
                        if type(user_id) is str and user_id:
                            message = build(record, user_id)
                        else:  # only with anonymous: no external id, a Braze user id
                            message = build(record, None, anonymous_id=str(record["user_id"]).strip())
                        event = dumps(message)
                    except (ValueError, TypeError, OverflowError, orjson.JSONEncodeError) as exc:
                        result.dead_letters.append(
                            DeadLetter(
                                "unmappable_event", key, event_type, record["id"], first_row + row, str(exc)
                            )
                        )
                        continue
                    if len(event) > MAX_EVENT_BYTES:
                        detail = f"{len(event)} bytes as JSON; Segment's limit is {MAX_EVENT_BYTES}"
                        result.dead_letters.append(
                            DeadLetter(
                                "event_over_32kb", key, event_type, record["id"], first_row + row, detail
                            )
                        )
                        continue
                    events.append(event)
                    message_ids.append(message["messageId"])
                    rows.append(first_row + row)
                writer.add_many(events, message_ids, key, rows, event_type)
            first_row += len(records)
        if batches.error:
            result.files_failed += 1
            result.dead_letters.append(DeadLetter("truncated_file", key, event_type, detail=batches.error))

    close_file()
    writer.close()
    return result
