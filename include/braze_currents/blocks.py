"""Decode the data blocks of an Avro object container file with polars, fastavro answering for the rest.

fastavro builds a Python dict per record as it parses; polars (Rust) parses a run of blocks into
columns in a fraction of that time, and even handing the columns back as dicts costs less than half
of fastavro's decode. The records and their order are the same; fastavro stays the reference:

- the container's framing (header, block counts and sizes, sync markers) is read here, block by block,
  without decoding any record;
- a run of whole blocks goes to polars as a small container of its own (the file's header and those
  blocks, byte for byte), and comes back as a polars DataFrame;
- a block polars must not be given goes to fastavro alone, and the walk goes on after it: one of no
  records (polars stops there) or of more records than its bytes could hold (polars would size its
  columns by that count); after :data:`MAX_ODD_BLOCKS` of them the rest of the file goes to fastavro;
- a run polars refuses, a block cut short or followed by a wrong sync marker, and everything after
  it, go to fastavro record by record, so a file cut short yields exactly the records fastavro yields
  and stops where fastavro stops, with fastavro's error. (Damage inside a block that leaves its
  framing whole can be read differently: see the note on :class:`braze_currents.reader.RecordBatches`.)

Files in other codecs, or with a schema outside what Currents uses (:func:`plain_schema`), are read
by fastavro whole; :class:`braze_currents.reader.RecordBatches` decides. polars marks ``read_avro``
unstable: the version is pinned, and ``tests/unit/test_blocks.py`` checks it against fastavro on
Braze's sample files, every codec and damaged files.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import fastavro

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
# Codecs polars reads; a file in another codec Avro allows is decoded by fastavro alone.
POLARS_CODECS = frozenset({"null", "deflate", "snappy"})

# A block's records polars is given at most: it allocates its columns for the count a block declares.
MAX_BLOCK_RECORDS = 1_000_000
# Blocks for fastavro alone, each read with its own copy of the header, before the rest of the file
# goes to fastavro at once: a file of many such blocks and a large header costs no more than fastavro.
MAX_ODD_BLOCKS = 16
_ODD = "a block for fastavro alone"
_BROKEN = "a broken block"

# polars runs a thread pool, which a forked child inherits without its threads: polars may hang there.
# A process forked while polars was loaded therefore never calls it and decodes with fastavro.
_POLARS_FORKED = False


def _after_fork_in_child() -> None:
    global _POLARS_FORKED
    if "polars" in sys.modules:
        _POLARS_FORKED = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def polars_usable() -> bool:
    """Whether this process may decode with polars (installed, and not forked with it loaded)."""
    if _POLARS_FORKED:
        return False
    if "polars" not in sys.modules:
        # A run of blocks is small, and prepare reads files in parallel in processes: polars' own
        # threads would only contend with them (and each costs memory).
        os.environ.setdefault("POLARS_MAX_THREADS", "1")
    try:
        import polars  # noqa: F401
    except ImportError:
        return False
    return True


_PLAIN_TYPES = frozenset({"string", "int", "long", "boolean"})


def plain_schema(schema: Any) -> bool:
    """Whether a writer schema uses only what Currents schemas use, where polars reads values as
    fastavro does: a record of strings, ints, longs, booleans and arrays of strings, each maybe in a
    union with null, and no logical types (polars and fastavro give those different Python types)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return False
    return all(isinstance(field, dict) and _plain(field.get("type")) for field in schema.get("fields", []))


def _plain(avro_type: Any, nested: bool = False) -> bool:
    if isinstance(avro_type, str):
        return avro_type in _PLAIN_TYPES
    if isinstance(avro_type, list):
        others = [member for member in avro_type if member != "null"]
        return not nested and len(avro_type) == 2 and len(others) == 1 and _plain(others[0], True)
    if not isinstance(avro_type, dict) or "logicalType" in avro_type:
        return False
    if avro_type.get("type") == "array":
        items = avro_type.get("items")
        nullable = isinstance(items, list) and sorted(map(str, items)) == ["null", "string"]
        return items == "string" or nullable
    return avro_type.get("type") in _PLAIN_TYPES


def as_records(batch: Any) -> list[dict[str, Any]]:
    """A batch from :class:`BlockDecoder` as record dicts, in order."""
    if isinstance(batch, FrameRecords):
        batch = batch.frame
    return batch if isinstance(batch, list) else batch.to_dicts()


class FrameRecords(Sequence):
    """A polars batch seen as a sequence of records, without making a dict per record.

    Code that needs a few fields of every record asks :func:`column` for them: each column is turned
    into Python values once. Indexing gives one record as a dict, as fastavro would have decoded it.
    """

    def __init__(self, frame: Any) -> None:
        self.frame = frame
        self._columns: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return self.frame.height

    def column(self, name: str) -> list[Any]:
        if name not in self._columns:
            present = name in self.frame.columns
            self._columns[name] = self.frame[name].to_list() if present else [None] * self.frame.height
        return self._columns[name]

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self[index] for index in range(*row.indices(len(self)))]
        return {name: self.column(name)[row] for name in self.frame.columns}


def column(records: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    """The values of field ``name`` of every record (None where a record lacks it), in order."""
    if isinstance(records, FrameRecords):
        return records.column(name)
    return [record.get(name) for record in records]


class FramingError(Exception):
    """The bytes where a block should start are not a whole block followed by the file's sync marker."""


def _read_long(stream: BinaryIO) -> int:
    """Read one zigzag-encoded Avro long; raise FramingError at the end of the data or on a runaway."""
    shift = value = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise FramingError("the data ends inside a block header")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
        if shift > 63:
            raise FramingError("a block count or size is not a valid long")


def read_header(stream: BinaryIO) -> tuple[bytes, bytes]:
    """Read a container's header from the start of ``stream``; return its bytes and the sync marker.

    The stream is left at the first block. Call it only on a header fastavro has already accepted.
    """
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    if stream.read(4) != MAGIC:
        raise FramingError("no Avro magic bytes")
    while True:
        count = _read_long(stream)
        if count == 0:
            break
        if count < 0:
            count = -count
            _read_long(stream)  # the block's size in bytes, not needed to read it
        for _ in range(2 * count):  # a key and a value per entry, each a length and bytes
            length = _read_long(stream)
            # A length past the end of the data is not read: fastavro, reading longs in 64 bits, may
            # make sense of a varint with bits above them, and then reads the file whole.
            if length < 0 or length > size - stream.tell() or len(stream.read(length)) != length:
                raise FramingError("the header's metadata is cut short")
    sync = stream.read(SYNC_SIZE)
    if len(sync) != SYNC_SIZE:
        raise FramingError("the header's sync marker is cut short")
    end = stream.tell()
    stream.seek(0)
    header = stream.read(end)
    return header, sync


class BlockDecoder:
    """Yield the records of a container file in order, in batches of at most ``batch_size``.

    :param stream: the whole object, seekable, its header already accepted by fastavro.
    :param batch_size: the most records in one batch; runs of blocks of about this many records are
        decoded at once.
    :param codec: the file's codec, one of :data:`POLARS_CODECS`.
    :param fields: the writer schema's field count (each takes a byte or more of a record).
    """

    def __init__(self, stream: BinaryIO, batch_size: int, *, codec: str, fields: int) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self.codec = codec
        self.fields = max(fields, 1)
        self.size = stream.seek(0, io.SEEK_END)
        self.header, self.sync = read_header(stream)
        # fastavro's exception, where decoding stopped early.
        self.error: BaseException | None = None
        # Runs polars could not read, and were read by fastavro instead (for tests and the curious).
        self.runs_by_fastavro = 0
        self.odd_blocks = 0

    def __iter__(self) -> Iterator[Any]:
        """Yield each batch as a polars DataFrame, or as a list of record dicts where fastavro read any
        of it; every batch holds ``batch_size`` records but the last."""
        pending: list[Any] = []  # frames and record lists, in order
        held = 0
        for part in self._decoded_runs():
            pending.append(part)
            held += len(part)
            while held >= self.batch_size:
                yield self._take(pending, self.batch_size)
                held -= self.batch_size
        if held:
            yield self._take(pending, held)

    def _take(self, pending: list[Any], count: int) -> Any:
        """Take ``count`` records off the front of ``pending``, as one frame where they all are frames."""
        parts, needed = [], count
        while needed:
            head = pending[0]
            if len(head) <= needed:
                parts.append(pending.pop(0))
                needed -= len(head)
            else:
                parts.append(head[:needed])
                pending[0] = head[needed:]
                needed = 0
        if all(isinstance(part, list) for part in parts):
            return [record for part in parts for record in part]
        if any(isinstance(part, list) for part in parts):
            return [record for part in parts for record in as_records(part)]
        if len(parts) == 1:
            return parts[0]
        import polars as pl

        return pl.concat(parts, rechunk=False)

    def _decoded_runs(self) -> Iterator[Any]:
        """Decode the file run by run: polars for runs of plain blocks, fastavro for a block polars
        should not be given, and fastavro from a broken block to the end."""
        import polars as pl
        from polars.exceptions import PanicException

        while True:
            start = self.stream.tell()
            records, end, stop, after = self._scan_run(start)
            if records:
                self.stream.seek(start)
                run = self.header + self.stream.read(end - start)
                try:
                    frame = pl.read_avro(io.BytesIO(run))
                    if frame.height != records:  # the blocks declare how many records they hold
                        raise ValueError(f"polars read {frame.height} of {records} records")
                except (Exception, PanicException):  # refused, or polars broke on bad bytes:
                    # fastavro reads what it can of the run and says why it stopped.
                    self.runs_by_fastavro += 1
                    yield from self._fastavro(run)
                    if self.error is not None:
                        return
                else:
                    yield frame
            if stop == _ODD:
                self.odd_blocks += 1
                if self.odd_blocks > MAX_ODD_BLOCKS:
                    stop = _BROKEN  # not broken: but fastavro reads the rest faster, block by block
            if stop == _BROKEN:
                self.stream.seek(end)
                yield from self._fastavro(self.header + self.stream.read())
                return
            if stop == _ODD:
                self.stream.seek(end)
                yield from self._fastavro(self.header + self.stream.read(after - end))
                if self.error is not None:
                    return
            elif end == start:  # the end of the data, between blocks
                return
            self.stream.seek(after)

    def _scan_run(self, start: int) -> tuple[int, int, str | None, int]:
        """Walk whole plain blocks from ``start`` until they hold ``batch_size`` records or the data ends.

        :returns: the records in those blocks, where they end, what stopped the walk (None, a block
            for fastavro alone, or a broken block, found where they end), and where to go on from.
        """
        stream, records, end = self.stream, 0, start
        while records < self.batch_size and end < self.size:
            stream.seek(end)
            try:
                count = _read_long(stream)
                size = _read_long(stream)
                if count < 0 or size < 0 or size > self.size - stream.tell() - SYNC_SIZE:
                    raise FramingError("a negative block count, or a size past the end of the data")
                stream.seek(size, io.SEEK_CUR)
                if stream.read(SYNC_SIZE) != self.sync:
                    raise FramingError("no sync marker after a block")
            except FramingError:
                return records, end, _BROKEN, end
            if not 0 < count <= self._most_records(size):
                # polars stops at an empty block, and sizes its columns by the count it is told.
                return records, end, _ODD, stream.tell()
            records += count
            end = stream.tell()
        return records, end, None, end

    def _most_records(self, size: int) -> int:
        """The most records a block of ``size`` bytes can plausibly hold: each field takes a byte or
        more; a compressed block is given a byte a record."""
        bound = size // self.fields if self.codec == "null" else size
        return min(bound, MAX_BLOCK_RECORDS)

    def _fastavro(self, container: bytes) -> Iterator[list[dict[str, Any]]]:
        """Records fastavro reads from a container, up to the first it cannot read, a batch at a time."""
        records: list[dict[str, Any]] = []
        try:
            for record in fastavro.reader(io.BytesIO(container)):
                records.append(record)
                if len(records) == self.batch_size:
                    yield records
                    records = []
        except Exception as exc:
            self.error = exc
        if records:
            yield records
