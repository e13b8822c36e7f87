"""Decode the data blocks of an Avro object container file with polars, fastavro answering for the rest.

fastavro builds a Python dict per record as it parses; polars (Rust) parses a run of blocks into
columns in a fraction of that time, and handing the columns back as dicts still costs less than half
of fastavro's decode. The records and their order are the same; fastavro stays the reference:

- the container's framing (header, block counts and sizes, sync markers) is read here, block by block,
  without decoding any record;
- a run of whole blocks goes to polars as a small container of its own (the file's header and those
  blocks, byte for byte);
- a run polars refuses, a block cut short or followed by a wrong sync marker, and everything after
  it, go to fastavro record by record, so a file cut short yields exactly the records fastavro yields
  and stops where fastavro stops, with fastavro's error. (Damage inside a block that leaves its
  framing whole can be read differently: see the note on :class:`braze_currents.reader.RecordBatches`.)

polars marks ``read_avro`` unstable: the version is pinned, and ``tests/unit/test_blocks.py`` checks it
against fastavro on Braze's sample files, every codec and damaged files.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import fastavro

MAGIC = b"Obj\x01"
SYNC_SIZE = 16
# Codecs polars reads; a file in another codec Avro allows is decoded by fastavro alone.
POLARS_CODECS = frozenset({"null", "deflate", "snappy"})

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
            if length < 0 or len(stream.read(length)) != length:
                raise FramingError("the header's metadata is cut short")
    sync = stream.read(SYNC_SIZE)
    if len(sync) != SYNC_SIZE:
        raise FramingError("the header's sync marker is cut short")
    end = stream.tell()
    stream.seek(0)
    header = stream.read(end)
    return header, sync


class BlockDecoder:
    """Yield the records of a container file in order, in lists of at most ``batch_size``.

    :param stream: the whole object, seekable, its header already accepted by fastavro.
    :param batch_size: the most records in one list; runs of blocks of about this many records are
        decoded at once.
    """

    def __init__(self, stream: BinaryIO, batch_size: int) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self.header, self.sync = read_header(stream)
        # Set when decoding stopped early: fastavro's exception, and how many records came before it.
        self.error: BaseException | None = None
        self.yielded = 0
        # Runs polars could not read, and were read by fastavro instead (for tests and the curious).
        self.runs_by_fastavro = 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        pending: list[dict[str, Any]] = []
        for records in self._decoded_runs():
            pending.extend(records)
            while len(pending) >= self.batch_size:
                batch, pending = pending[: self.batch_size], pending[self.batch_size :]
                self.yielded += len(batch)
                yield batch
        if pending:
            self.yielded += len(pending)
            yield pending

    def _decoded_runs(self) -> Iterator[list[dict[str, Any]]]:
        """Decode the file run by run: polars for whole blocks, fastavro from a broken block on."""
        import polars as pl
        from polars.exceptions import PanicException

        while True:
            start = self.stream.tell()
            records, end, broken = self._scan_run(start)
            if end > start:
                self.stream.seek(start)
                run = self.header + self.stream.read(end - start)
                self.stream.seek(end)
                if records:
                    try:
                        frame = pl.read_avro(io.BytesIO(run))
                    except (Exception, PanicException):  # refused, or polars broke on bad bytes:
                        # fastavro reads what it can of the run and says why it stopped.
                        self.runs_by_fastavro += 1
                        decoded = self._fastavro(run)
                        yield decoded
                        if self.error is not None:
                            return
                    else:
                        for offset in range(0, frame.height, self.batch_size):
                            yield frame.slice(offset, self.batch_size).to_dicts()
            if broken:
                self.stream.seek(end)
                yield self._fastavro(self.header + self.stream.read())
                return
            if end == start:  # the end of the data, between blocks
                return

    def _scan_run(self, start: int) -> tuple[int, int, bool]:
        """Walk whole blocks from ``start`` until they hold ``batch_size`` records or the data ends.

        :returns: the records in those blocks, where the run ends, and whether a broken block follows.
        """
        stream, records, end = self.stream, 0, start
        while records < self.batch_size:
            if not stream.read(1):
                return records, end, False
            stream.seek(end)
            try:
                count = _read_long(stream)
                size = _read_long(stream)
                if count < 0 or size < 0:
                    raise FramingError("a negative block count or size")
                stream.seek(size, io.SEEK_CUR)
                if stream.read(SYNC_SIZE) != self.sync:
                    raise FramingError("no sync marker after a block")
            except FramingError:
                return records, end, True
            records += count
            end = stream.tell()
        return records, end, False

    def _fastavro(self, container: bytes) -> list[dict[str, Any]]:
        """Records fastavro reads from a small container, up to the first it cannot read."""
        records: list[dict[str, Any]] = []
        try:
            for record in fastavro.reader(io.BytesIO(container)):
                records.append(record)
        except Exception as exc:
            self.error = exc
        return records
