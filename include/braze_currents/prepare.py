"""Turn a window's Currents objects into staged chunks of Segment batch request bodies.

The steps, each counted: decode every object, filter with pandas (selected event types, events
without an external user id, repeated ids), map each kept event to a ``track`` message, cut
size-safe batches and write them, a chunk at a time, to the staging location.

The first four steps need one file at a time and run in worker processes when asked
(``prepare_window(workers=N)``); repeats across files, counting, batching and staging need the whole
window in order and run in the calling process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import pickle
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import orjson

from braze_currents.batching import MAX_EVENT_BYTES, BatchBuilder
from braze_currents.blocks import FrameRecords, as_records
from braze_currents.columnar import ColumnarBuilder
from braze_currents.deadletters import DeadLetter
from braze_currents.filtering import (
    ALREADY_SENT,
    DUPLICATE,
    MISSING_ID,
    NO_EXTERNAL_ID,
    SeenIds,
    select_rows,
)
from braze_currents.filters import EventFilters
from braze_currents.mapping import EventMapping, MessageBuilder, integration_context
from braze_currents.reader import DecodeError, ListedObject, RecordBatches
from braze_currents.storage import PendingObject, Store, write_all

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
    decoded_by: Counter = dataclasses.field(default_factory=Counter)

    @property
    def dead_lettered(self) -> int:
        return sum(1 for letter in self.dead_letters if letter.id is not None)


class _ChunkWriter:
    """Gather batches and their sources; write a chunk to staging once it holds enough events.

    Beside each chunk go ``.sources.json`` (the file and row of each event, for dead letters) and
    ``.message-ids.jsonl`` (each batch's messageIds, one JSON list per body line, so an upload need
    not parse the bodies again).
    """

    def __init__(self, staging: Store, folder: str, settings: PrepareSettings, result: PrepareResult) -> None:
        self.staging, self.folder, self.settings, self.result = staging, folder, settings, result
        self.builder = BatchBuilder(
            integrations=settings.integrations,
            max_events=settings.max_batch_events,
            max_bytes=settings.max_batch_bytes,
        )
        self._reset()

    def _reset(self) -> None:
        # Bodies go straight to a file in staging (or, for S3, a local file sent when the chunk is
        # whole): this process holds a batch at a time, whatever chunk_events is (50,000 events are
        # some 30 MB).
        self.data: PendingObject | None = None
        self.ids = io.BytesIO()
        self.open_ids: list[str] = []  # the ids of the batch the builder holds open
        self.batches = 0
        # (file index, row) per event, as numpy blocks: a tuple per event would scatter small objects
        # across the heap for the life of the chunk.
        self.sources: list[Any] = []
        self.files: dict[str, int] = {}
        self.types: list[str] = []
        self.digest = hashlib.blake2b(digest_size=8)
        self.events = 0

    def add_joined(
        self, joined: bytes, lengths: Any, message_ids: list[str], key: str, rows: Any, event_type: str
    ) -> None:
        """Add serialised events of one file in order, handed over as one buffer (each event followed
        by a comma, see :meth:`BatchBuilder.extend_joined`); a chunk is written each time it is full."""
        import numpy as np

        ends = np.cumsum(np.asarray(lengths, dtype=np.int64) + 1).tolist()
        joined = memoryview(joined)  # slices of it are views: each message is copied once, into a body
        start = 0
        while start < len(lengths):
            end = start + min(len(lengths) - start, self.settings.chunk_events - self.events)
            file_index = self.files.setdefault(key, len(self.files))
            self.sources.append(np.column_stack((np.full(end - start, file_index), rows[start:end])))
            if not self.types or self.types[-1] != event_type:
                self.types.append(event_type)
            # Hashing joined ids gives the same digest as hashing them one by one, at a fraction of the cost.
            self.digest.update("".join(message_ids[start:end]).encode())
            self.open_ids.extend(message_ids[start:end])
            begin = ends[start - 1] if start else 0
            self._write(self.builder.extend_joined(joined[begin : ends[end - 1]], lengths[start:end]))
            self.events += end - start
            if self.events >= self.settings.chunk_events:
                self.close()
            start = end

    def _write(self, bodies: list[bytes]) -> None:
        sizes = self.builder.closed_sizes
        if bodies and self.data is None:
            self.data = self.staging.pending(self.folder)
        for body, size in zip(bodies, sizes, strict=True):
            self.data.file.write(body)
            self.data.file.write(b"\n")
            self.ids.write(orjson.dumps(self.open_ids[:size]))
            self.ids.write(b"\n")
            del self.open_ids[:size]
        sizes.clear()
        self.batches += len(bodies)

    def discard(self) -> None:
        if self.data is not None:
            self.data.discard()
            self.data = None

    def close(self) -> None:
        last = self.builder.flush()
        if last:
            self._write([last])
        if not self.batches or self.data is None:
            return
        import numpy as np

        sequence = len(self.result.chunks)
        chunk_id = f"{sequence:04d}-{self.digest.hexdigest()}"
        name = f"{self.folder}/chunk-{chunk_id}.ndjson"
        size = self.data.file.tell()  # the chunk is written front to back
        self.data.publish(name)
        self.data = None
        self.staging.put(f"{self.folder}/chunk-{chunk_id}.message-ids.jsonl", self.ids.getvalue())
        sources = {"files": list(self.files), "events": np.concatenate(self.sources)}
        self.staging.put(
            f"{self.folder}/chunk-{chunk_id}.sources.json",
            orjson.dumps(sources, option=orjson.OPT_SERIALIZE_NUMPY),
        )
        self.result.chunks.append(
            StagedChunk(chunk_id, name, self.events, self.batches, size, list(self.types))
        )
        self.result.staged_events += self.events
        self._reset()


# What became of each id a file's batch took first (see _Piece.fates).
_FATE_SEND = 0
_FATE_ALREADY_SENT = 1
_FATE_HELD = 2
_FATE_LETTER = 3


@dataclasses.dataclass
class _Piece:
    """One decoded batch of a file, decided as far as the file alone allows.

    Only repeats of ids seen in earlier files are left to decide; the merge does that, in file order,
    and each id found earlier cancels what the file decided for it.

    :param read: records in the batch.
    :param first_row: the row of the batch's first record in its file.
    :param not_selected: records dropped because their event type is not selected.
    :param missing_id: rows without an id.
    :param no_external: records without an external user id.
    :param repeated: records whose id an earlier row of the same file had.
    :param hashes: the hashes of the ids the batch took first in the file, in row order.
    :param fates: for each of those ids, one of the ``_FATE_*`` codes.
    :param held: per ``_FATE_HELD``, in order, the filter that held it back.
    :param letters: per ``_FATE_LETTER``, in order, its dead letter.
    :param blob: per ``_FATE_SEND``, in order, its serialised message followed by a comma.
    :param lengths: the length of each message in ``blob``.
    :param message_ids: each message's messageId.
    :param rows: each message's row in the file.
    """

    read: int
    first_row: int
    not_selected: int = 0
    missing_id: list[int] = dataclasses.field(default_factory=list)
    no_external: int = 0
    repeated: int = 0
    hashes: tuple[Any, Any] | None = None
    fates: Any = None
    held: list[str] = dataclasses.field(default_factory=list)
    letters: list[DeadLetter] = dataclasses.field(default_factory=list)
    blob: bytes = b""
    lengths: Any = None
    message_ids: list[str] = dataclasses.field(default_factory=list)
    rows: Any = None


@dataclasses.dataclass
class _FileOutcome:
    """What reading one file gave: its pieces, or why it could not be read (then ``failed`` is set)."""

    pieces: Iterable[_Piece]
    failed: str | None = None
    truncated: str | None = None
    spool: str | None = None
    decoder: str | None = None


class _FileReader:
    """Decode, select, filter and map one file at a time, without knowing the rest of the window.

    :param already_sent: messageIds the ledger records as delivered.
    """

    def __init__(
        self, mapping: EventMapping, settings: PrepareSettings, already_sent: Collection[str]
    ) -> None:
        self.mapping, self.settings, self.already_sent = mapping, settings, already_sent
        self.integration = integration_context()

    def pieces(self, batches: RecordBatches, event_type: str) -> Iterator[_Piece]:
        """Decide, batch by batch, what becomes of a file's events; map those to send."""
        import numpy as np

        key, settings = batches.key, self.settings
        selected = event_type in settings.event_types
        if selected:
            spec = self.mapping.spec(event_type)
            build = MessageBuilder(
                spec, message_id_prefix=settings.message_id_prefix, integration=self.integration
            ).build
            at_once = ColumnarBuilder(
                spec, message_id_prefix=settings.message_id_prefix, integration=self.integration
            )
        dumps = orjson.dumps
        seen = SeenIds()  # this file's ids; the merge checks them against the window's
        first_row = 0
        for batch in batches.batches():
            # A polars batch is read column by column where it can; its records become dicts only for
            # messages the columnar builder leaves to the per-event loop.
            records = batch if isinstance(batch, list) else FrameRecords(batch)
            piece = _Piece(read=len(records), first_row=first_row)
            first_row += len(records)
            if not selected:
                piece.not_selected = len(records)
                yield piece
                continue
            selection = select_rows(
                records,
                seen,
                already_sent=self.already_sent,
                message_id_prefix=settings.message_id_prefix,
                anonymous=settings.anonymous,
            )
            piece.missing_id = selection.rows(MISSING_ID)
            piece.no_external = selection.count(NO_EXTERNAL_ID)
            piece.repeated = selection.count(DUPLICATE)
            piece.hashes = selection.taken_hashes
            taken = selection.taken.tolist()
            fates = np.where(
                selection.outcome[selection.taken] == ALREADY_SENT, _FATE_ALREADY_SENT, _FATE_SEND
            )
            send = [row for row, fate in zip(taken, fates.tolist(), strict=True) if fate == _FATE_SEND]
            position = {row: index for index, row in enumerate(taken)}
            if settings.filters:
                reasons = settings.filters.reasons(records, send, event_type)
                for row, reason in zip(send, reasons, strict=True):
                    if reason is not None:
                        fates[position[row]] = _FATE_HELD
                        piece.held.append(reason)
                send = [row for row, reason in zip(send, reasons, strict=True) if reason is None]
            user_ids = selection.user_ids
            if isinstance(records, FrameRecords) and send:
                serialised = self._at_once(at_once, records, send, user_ids)
                if serialised is not None:
                    piece.blob, piece.lengths = serialised
                    ids = records.column("id")
                    piece.message_ids = [settings.message_id_prefix + ids[row] for row in send]
                    piece.rows = np.asarray(send, dtype=np.int64) + piece.first_row
                    piece.fates = fates
                    yield piece
                    continue
                records = as_records(records)
            blob = bytearray()
            lengths: list[int] = []
            rows: list[int] = []
            for row in send:
                record = records[row]
                try:
                    user_id = user_ids[row]
                    if type(user_id) is str and user_id:
                        message = build(record, user_id)
                    else:  # only with anonymous: no external id, a Braze user id
                        message = build(record, None, anonymous_id=str(record["user_id"]).strip())
                    event = dumps(message)
                except (ValueError, TypeError, OverflowError, orjson.JSONEncodeError) as exc:
                    detail = str(exc)
                    reason = "unmappable_event"
                else:
                    if len(event) <= MAX_EVENT_BYTES:
                        # Copied into one buffer at once: orjson's output holds a buffer of several
                        # kilobytes whatever its length, which a batch of thousands would keep alive.
                        blob += event
                        blob += b","
                        lengths.append(len(event))
                        piece.message_ids.append(message["messageId"])
                        rows.append(piece.first_row + row)
                        continue
                    detail = f"{len(event)} bytes as JSON; Segment's limit is {MAX_EVENT_BYTES}"
                    reason = "event_over_32kb"
                fates[position[row]] = _FATE_LETTER
                piece.letters.append(
                    DeadLetter(reason, key, event_type, record["id"], piece.first_row + row, detail)
                )
            piece.fates = fates
            piece.blob = bytes(blob)
            piece.lengths = np.array(lengths, dtype=np.int64)
            piece.rows = np.array(rows, dtype=np.int64)
            yield piece

    @staticmethod
    def _at_once(
        builder: ColumnarBuilder, records: FrameRecords, send: list[int], user_ids: list[Any]
    ) -> tuple[bytes, Any] | None:
        """Serialise the rows to send with polars expressions; None leaves them to the per-event loop."""
        identities, anonymous = [], []
        braze_ids = None
        for row in send:
            user_id = user_ids[row]
            if type(user_id) is str and user_id:
                identities.append(user_id)
                anonymous.append(False)
            else:  # only with anonymous: no external id, a Braze user id
                if braze_ids is None:
                    braze_ids = records.column("user_id")
                identities.append(str(braze_ids[row]).strip())
                anonymous.append(True)
        return builder.serialise(records.frame, send, identities, anonymous)

    def read(self, key: str, event_type: str, data: bytes | BinaryIO) -> _FileOutcome:
        """Read one object; its pieces are produced as they are iterated."""
        try:
            batches = RecordBatches(data, key)
        except DecodeError as exc:
            return _FileOutcome(pieces=(), failed=str(exc))
        outcome = _FileOutcome(pieces=(), decoder=batches.decoder)

        def pieces() -> Iterator[_Piece]:
            yield from self.pieces(batches, event_type)
            outcome.truncated = batches.error

        outcome.pieces = pieces()
        return outcome


# -- reading files in worker processes ----------------------------------------------------------------

_WORKER_READER: _FileReader | None = None


def _start_worker(reader: _FileReader, parent: int) -> None:
    import signal

    global _WORKER_READER
    _WORKER_READER = reader
    _die_with_parent(parent)
    # The parent logs what a worker finds; two processes writing one task log could mix lines.
    logging.getLogger("braze_currents").setLevel(logging.CRITICAL)
    # A forked worker inherits the task's signal handlers (Airflow's among them); a worker told to
    # stop should just stop, and leave the task's own shutdown to the task.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)


def _die_with_parent(parent: int) -> None:
    """Have the kernel stop this worker if the task's process (pid ``parent``) dies: SIGKILL leaves no
    time to stop the pool, and a worker waiting for its next file would wait forever. Linux only."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    # The signal comes only for a death after the call: a task that died between the fork and here
    # (a busy machine can take that long to run a new worker) has already left it an orphan.
    if os.getppid() != parent:
        os._exit(1)


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let a daemonic process start the workers.

    Celery runs Airflow tasks under daemonic pool processes, and multiprocessing refuses children to
    a daemonic process because it could not wait for them at exit. Prepare always stops and waits for
    its workers before it returns (and each dies with the task, see :func:`_die_with_parent`), so the
    flag is lifted while the pool starts them.
    """
    import multiprocessing

    config = multiprocessing.current_process()._config  # there is no public way to read or lift it
    daemon = config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        if daemon is not None:
            config["daemon"] = daemon
        else:
            config.pop("daemon", None)


def _read_to_spool(key: str, event_type: str, source: str, spool: str) -> _FileOutcome:
    """In a worker: read the object the parent saved at ``source`` (then delete it), and write its
    pieces to ``spool`` one after the other; return the outcome without them."""
    assert _WORKER_READER is not None
    with open(source, "rb") as data, open(spool, "wb") as out:
        os.unlink(source)  # gone once closed, whatever happens; decoding reads it as it goes
        outcome = _WORKER_READER.read(key, event_type, data)
        if outcome.failed:
            return outcome
        for piece in outcome.pieces:
            pickle.dump(piece, out, protocol=pickle.HIGHEST_PROTOCOL)
    return _FileOutcome(pieces=(), truncated=outcome.truncated, spool=spool, decoder=outcome.decoder)


def _spooled(spool: str) -> Iterator[_Piece]:
    """In the parent: a spooled file's pieces, loaded one at a time, so one batch is in memory."""
    with open(spool, "rb") as handle:
        while True:
            try:
                # Only this run's workers write in its private spool folder.
                yield pickle.load(handle)
            except EOFError:
                break
    os.unlink(spool)


def _fork_context() -> Any:
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    # fork starts a worker in milliseconds with the parent's imports; elsewhere spawn works, slower.
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def prepare_window(
    objects: Iterable[ListedObject],
    fetch: Callable[[str], bytes | BinaryIO],
    *,
    mapping: EventMapping,
    settings: PrepareSettings,
    staging: Store,
    folder: str,
    seen_ids: set[str] | None = None,
    workers: int = 1,
) -> PrepareResult:
    """Decode, filter, map and batch a window's objects into staged chunks.

    With ``workers`` above 1, files are decoded, filtered and mapped in that many worker processes,
    and this process merges their output in the listed order: it drops repeats of ids seen in earlier
    files, counts, batches and stages. The staged chunks are the same as with one process.

    :param objects: the listed objects of the window, in a stable order.
    :param fetch: returns an object's bytes by key, or a binary stream of them (such as the body of
        an S3 response), which is read to its end in pieces and closed.
    :param mapping: the event mapping.
    :param settings: batching and filtering settings.
    :param staging: where chunks are written.
    :param folder: the window's folder inside ``staging``.
    :param seen_ids: messageIds the ledger records as delivered; such events are dropped as
        ``already_sent``, so a rerun never sends an event twice.
    :param workers: processes that read files; 1 reads them in this process.
    """
    objects = list(objects)
    _sweep_spool_folders()
    result = PrepareResult()
    writer = _ChunkWriter(staging, folder, settings, result)
    reader = _FileReader(mapping, settings, seen_ids or set())
    seen = SeenIds()
    keys: set[str] = set()

    def merge_file(listed: ListedObject, outcome: _FileOutcome | None, error: str | None = None) -> None:
        key, event_type = listed.key, listed.event_type
        if outcome is None:  # listed twice: read it once, so no event is counted twice
            result.files_listed_twice += 1
            return
        result.files += 1
        source = {"key": key, "etag": listed.etag, "size": listed.size, "read": 0}
        result.source_files.append(source)
        if outcome.failed:
            result.files_failed += 1
            result.dead_letters.append(DeadLetter("undecodable_file", key, event_type, detail=outcome.failed))
            log.warning("Dead-lettered %s: %s", key, outcome.failed)
            source.update(dropped={}, dead_lettered=0, staged=0)
            return
        result.decoded_by[outcome.decoder] += 1
        dropped_before, letters_before = Counter(result.dropped), len(result.dead_letters)
        pieces = _spooled(outcome.spool) if outcome.spool else outcome.pieces
        for piece in pieces:
            _merge_piece(piece, key, event_type, source)
        if outcome.truncated:
            result.files_failed += 1
            result.dead_letters.append(
                DeadLetter("truncated_file", key, event_type, detail=outcome.truncated)
            )
            if outcome.spool:
                log.warning("Decoding %s %s", key, outcome.truncated)
        dropped = {k: n - dropped_before.get(k, 0) for k, n in result.dropped.items()}
        source["dropped"] = {k: n for k, n in dropped.items() if n}
        source["dead_lettered"] = sum(
            1 for letter in result.dead_letters[letters_before:] if letter.id is not None
        )
        source["staged"] = source["read"] - sum(source["dropped"].values()) - source["dead_lettered"]

    def _merge_piece(piece: _Piece, key: str, event_type: str, source: dict[str, Any]) -> None:
        import numpy as np

        result.events_read += piece.read
        source["read"] += piece.read
        if piece.not_selected:
            result.dropped[DROP_NOT_SELECTED] += piece.not_selected
            return
        for row in piece.missing_id:
            result.dead_letters.append(DeadLetter("missing_id", key, event_type, "", piece.first_row + row))
        earlier = seen.add_hashes(*piece.hashes)
        fates = piece.fates
        for reason, count in (
            (DROP_NO_EXTERNAL_ID, piece.no_external),
            (DROP_DUPLICATE, piece.repeated + int(earlier.sum())),
            (DROP_ALREADY_SENT, int(((fates == _FATE_ALREADY_SENT) & ~earlier).sum())),
        ):
            if count:
                result.dropped[reason] += count
        # An id an earlier file had is a repeat, whatever this file decided for it.
        for reason, first in zip(piece.held, earlier[fates == _FATE_HELD].tolist(), strict=True):
            if not first:
                result.dropped[reason] += 1
        for letter, first in zip(piece.letters, earlier[fates == _FATE_LETTER].tolist(), strict=True):
            if not first:
                result.dead_letters.append(letter)
        if not len(piece.lengths):
            return
        keep = ~earlier[fates == _FATE_SEND]
        if not keep.any():  # every message repeats an earlier file's
            return
        blob, lengths, message_ids, rows = piece.blob, piece.lengths, piece.message_ids, piece.rows
        if not keep.all():
            # The kept messages stand in runs between the repeats: copy a run at a time.
            ends = np.cumsum(lengths + 1)
            chosen = np.flatnonzero(keep)
            cuts = np.flatnonzero(np.diff(chosen) != 1) + 1
            firsts, lasts = chosen[np.r_[0, cuts]], chosen[np.r_[cuts - 1, len(chosen) - 1]]
            view = memoryview(blob)
            blob = b"".join(
                view[int(ends[first] - lengths[first] - 1) : int(ends[last])]
                for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True)
            )
            lengths, rows = lengths[keep], rows[keep]
            message_ids = [message_ids[index] for index in chosen.tolist()]
        writer.add_joined(blob, lengths, message_ids, key, rows, event_type)

    def fresh(listed: ListedObject) -> bool:
        if listed.key in keys:
            return False
        keys.add(listed.key)
        return True

    try:
        if workers <= 1 or len(objects) < 2:
            for listed in objects:
                if not fresh(listed):
                    merge_file(listed, None)
                    continue
                try:
                    data = fetch(listed.key)
                except DecodeError as exc:  # fetch found the object gone
                    merge_file(listed, _FileOutcome(pieces=(), failed=str(exc)))
                    continue
                # Decoded from a temporary file, as a worker does: the object's bytes wait in the page
                # cache rather than in this process while its batches are decoded and mapped.
                with tempfile.TemporaryFile() as handle:
                    _save(data, handle)
                    del data
                    handle.seek(0)
                    merge_file(listed, reader.read(listed.key, listed.event_type, handle))
        else:
            _prepare_in_workers(objects, fetch, reader, min(workers, len(objects)), fresh, merge_file)
        writer.close()
    except BaseException:
        writer.discard()  # the chunk it was writing: the task fails, and its retry starts again
        raise
    if result.decoded_by:
        log.info(
            "Decoded %s files with polars and %s with fastavro",
            result.decoded_by["polars"],
            result.decoded_by["fastavro"],
        )
    return result


def _save(data: bytes | BinaryIO, handle: BinaryIO) -> None:
    """Write an object to ``handle`` (see :func:`braze_currents.storage.write_all`); a stream is then
    closed."""
    try:
        write_all(data, handle)
    finally:
        if not isinstance(data, bytes | bytearray | memoryview):
            data.close()


_SPOOL_PREFIX = "braze-currents-prepare-"
# A spool folder unlocked for this long belongs to no running prepare: its owner locks it at once.
_SPOOL_GRACE_SECONDS = 60.0


def _spool_folder() -> tuple[str, int]:
    """A private folder for the window's objects and pieces, and a descriptor holding a lock on it for
    as long as this process (or a worker it forked) lives: a later prepare removes it only once no
    process holds that lock, whatever pid namespace or container the owner ran in."""
    import fcntl

    path = tempfile.mkdtemp(prefix=_SPOOL_PREFIX)
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return path, lock


def _sweep_spool_folders() -> None:
    """Remove the spool folders of prepare tasks that were killed, which hold Braze events: folders of
    this user whose lock no process holds."""
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            if entry.name.startswith(_SPOOL_PREFIX):
                with contextlib.suppress(OSError):
                    _remove_if_abandoned(entry)


def _remove_if_abandoned(entry: os.DirEntry) -> None:
    import fcntl
    import time

    if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
        return
    lock = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while its owner lives
        if time.time() - os.fstat(lock).st_ctime < _SPOOL_GRACE_SECONDS:
            return  # just made: its owner is about to lock it
        log.info("Removing %s, left by a prepare task that was killed", entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)
    finally:
        os.close(lock)


def _prepare_in_workers(
    objects: list[ListedObject],
    fetch: Callable[[str], bytes | BinaryIO],
    reader: _FileReader,
    workers: int,
    fresh: Callable[[ListedObject], bool],
    merge_file: Callable[..., None],
) -> None:
    """Read files in worker processes, a few ahead of the merge, and merge them in the listed order.

    Objects and results pass through files in a private folder on local disk: the parent saves each
    object it fetched there, and a worker writes the file's pieces there; so the parent holds one
    object while it saves it and one batch of messages while it merges, however far ahead the
    workers run.
    """
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    spool_dir, spool_lock = _spool_folder()
    ahead: collections.deque[tuple[ListedObject, Future | _FileOutcome | None]] = collections.deque()
    queue = iter(enumerate(objects))
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_fork_context(),
        initializer=_start_worker,
        initargs=(reader, os.getpid()),
    )
    try:

        def submit() -> bool:
            item = next(queue, None)
            if item is None:
                return False
            index, listed = item
            if not fresh(listed):
                ahead.append((listed, None))
                return True
            try:
                data = fetch(listed.key)
            except DecodeError as exc:  # fetch found the object gone
                ahead.append((listed, _FileOutcome(pieces=(), failed=str(exc))))
                return True
            source = os.path.join(spool_dir, f"{index:06d}.avro")
            with open(source, "wb") as handle:
                _save(data, handle)
            del data
            spool = os.path.join(spool_dir, f"{index:06d}.pieces")
            with _children_allowed():  # the pool starts a worker on a submit, until it has them all
                try:
                    future = pool.submit(_read_to_spool, listed.key, listed.event_type, source, spool)
                except BrokenProcessPool as exc:  # a worker died since the last submit: hand no more over
                    future = Future()
                    future.set_exception(exc)
                    ahead.append((listed, future))
                    return False
            ahead.append((listed, future))
            return True

        more = True
        while True:
            # Keep every worker busy, with two files saved beyond them: one slow file then stalls no one.
            while more and sum(1 for _, item in ahead if isinstance(item, Future)) < workers + 2:
                more = submit()
            if not ahead:
                break
            listed, item = ahead.popleft()
            try:
                outcome = item.result() if isinstance(item, Future) else item
            except BrokenProcessPool:
                # Every file in flight fails with the pool, so which one the dead worker held is unknown.
                raise RuntimeError(
                    "a prepare worker process died (killed, perhaps for lack of memory) before "
                    f"{listed.key} and the files after it were prepared; retry the task, or set the "
                    "Current's prepare_workers: 1 to read files in the task itself"
                ) from None
            merge_file(listed, outcome)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(spool_dir, ignore_errors=True)
        os.close(spool_lock)
