"""List a window's Currents objects in S3 and decode them (polars where it can, else fastavro)."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, BinaryIO

import fastavro

from braze_currents.blocks import (
    POLARS_CODECS,
    BlockDecoder,
    FramingError,
    as_records,
    plain_schema,
    polars_usable,
)
from braze_currents.keys import KeyLayoutError, parse_key, partition_name

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "time")


class DecodeError(Exception):
    """Raised when an object cannot be decoded as a Currents Avro file; the message says why."""


@dataclasses.dataclass(frozen=True)
class ListedObject:
    """One object found under a window's partitions."""

    key: str
    size: int
    etag: str
    event_type: str


@dataclasses.dataclass
class Listing:
    """What listing a window found: the Avro objects, and what was passed over."""

    objects: list[ListedObject] = dataclasses.field(default_factory=list)
    ignored_keys: int = 0
    unknown_event_types: dict[str, int] = dataclasses.field(default_factory=dict)
    unknown_layouts: int = 0


@dataclasses.dataclass
class DecodedFile:
    """The records of one object, and the error that stopped decoding early, if any."""

    records: list[dict[str, Any]]
    codec: str
    error: str | None = None


def _folders(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            yield common["Prefix"]


def _integration_folders(client: Any, bucket: str, prefix: str) -> list[str]:
    """Return the folders that hold ``event_type=`` folders: the prefix itself or its children."""
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    children = list(_folders(client, bucket, root))
    if any(child[len(root) :].startswith("event_type=") for child in children):
        return [root]
    return [child for child in children if child[len(root) :].startswith("dataexport.")]


def list_window(
    client: Any, *, bucket: str, prefix: str, hour: datetime, event_types: Iterable[str]
) -> Listing:
    """List the objects of partition ``date=<hour>`` for each selected event type.

    Lists one partition folder per event type and integration with a paginator, never the whole
    bucket. Keys that are not ``.avro`` are counted and ignored; ``event_type=`` folders of types
    that are not selected and not known are counted so the report can show them.

    :param client: a boto3 S3 client.
    :param bucket: the bucket Braze writes to.
    :param prefix: the folder set on the Current (``currents`` by default in Braze).
    :param hour: the window's start, a UTC hour.
    :param event_types: the dotted event types to export.
    """
    from braze_currents.catalog import field_lists

    selected = list(dict.fromkeys(event_types))
    listing = Listing()
    partition = partition_name(hour)
    paginator = client.get_paginator("list_objects_v2")
    for folder in _integration_folders(client, bucket, prefix):
        for type_folder in _folders(client, bucket, folder):
            name = type_folder[len(folder) :].rstrip("/").removeprefix("event_type=")
            if name not in field_lists():
                listing.unknown_event_types[name] = listing.unknown_event_types.get(name, 0) + 1
        for event_type in selected:
            partition_prefix = f"{folder}event_type={event_type}/date={partition}/"
            for page in paginator.paginate(Bucket=bucket, Prefix=partition_prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if not key.endswith(".avro"):
                        listing.ignored_keys += 1
                        continue
                    try:
                        parsed = parse_key(key)
                    except KeyLayoutError:
                        listing.ignored_keys += 1
                        continue
                    if parsed.layout == "unknown":
                        listing.unknown_layouts += 1
                    listing.objects.append(
                        ListedObject(key, int(obj.get("Size", 0)), obj.get("ETag", "").strip('"'), event_type)
                    )
    listing.objects.sort(key=lambda listed: (listed.event_type, listed.key))
    return listing


class RecordBatches:
    """Decode one Currents object container file a batch of records at a time.

    A window's files can hold 100,000 events each; taking them a batch at a time keeps memory flat
    whatever the file size. Fields are taken by name, so any writer schema version works. When a file
    stops decoding part way (a truncated upload), iteration ends after the records decoded so far and
    ``error`` says why.

    Records are decoded with polars where it can (see :mod:`braze_currents.blocks`), otherwise with
    fastavro; the records, and where a file cut short stops, are the same either way.

    .. note::
        Inside a damaged data block the two can part: a union branch number other than 0 or 1 stops
        fastavro when it is past the union's end and counts from the end when it is negative, where
        polars reads any number but 0 as the second branch; an ``int`` encoded over 32 bits is a large
        number to fastavro and its low 32 bits to polars; a boolean byte other than 0 or 1 is true to
        fastavro and false to polars. Files cut short, wrong sync markers and bytes after the last block
        are read exactly as fastavro reads them.

    :param data: the whole object, or a seekable binary file holding it (read as decoding goes, so
        only a few blocks of it are in memory at a time).
    :param key: the object key, used in error messages.
    :param batch_size: the most records in one batch; 2,000 decodes as fast as larger batches with
        less memory per worker.
    :param use_polars: decode with polars where it can; False decodes with fastavro alone.
    :raises DecodeError: when no record can be decoded: empty object, not Avro, or a schema without
        the fields every Currents type has.
    """

    def __init__(
        self, data: bytes | BinaryIO, key: str, batch_size: int = 2000, *, use_polars: bool = True
    ) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            stream: BinaryIO = io.BytesIO(data)
        else:
            stream = data
        if not stream.read(1):
            raise DecodeError("empty object (0 bytes)")
        stream.seek(0)
        try:
            reader = fastavro.reader(stream)
        except Exception as exc:  # fastavro raises many types for bad headers
            raise DecodeError(f"not an Avro object container file: {type(exc).__name__}: {exc}") from None
        schema = reader.writer_schema
        names = {field["name"] for field in schema.get("fields", [])} if isinstance(schema, dict) else set()
        missing = [name for name in REQUIRED_FIELDS if name not in names]
        if missing:
            raise DecodeError(f"writer schema has no {' or '.join(missing)} field")
        self.key = key
        self.codec: str = reader.codec
        self.batch_size = batch_size
        self.records_read = 0
        self.error: str | None = None
        self.decoder = "fastavro"
        self._blocks: BlockDecoder | None = None
        if use_polars and self.codec in POLARS_CODECS and plain_schema(schema) and polars_usable():
            try:
                self._blocks = BlockDecoder(stream, batch_size, codec=self.codec, fields=len(names))
            except (FramingError, OverflowError, ValueError):  # framing it cannot follow: fastavro reads
                stream.seek(0)
                reader = fastavro.reader(stream)
            else:
                self.decoder = "polars"
        self._records = iter(reader)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for batch in self.batches():
            yield as_records(batch)

    def batches(self) -> Iterator[Any]:
        """Yield each batch as it was decoded: a polars DataFrame, or a list of record dicts (where
        fastavro read it); :func:`braze_currents.blocks.as_records` turns either into dicts."""
        if self._blocks is not None:
            for batch in self._blocks:
                self.records_read += len(batch)
                yield batch
            if self._blocks.error is not None:
                self._stopped(self._blocks.error)
            return
        while self.error is None:
            batch = self._next_batch()
            if batch:
                yield batch
            if len(batch) < self.batch_size:
                return

    def _stopped(self, exc: BaseException) -> None:
        self.error = f"stopped after {self.records_read} records: {type(exc).__name__}: {exc}"
        log.warning("Decoding %s %s", self.key, self.error)

    def _next_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        append = batch.append
        try:
            for record in self._records:
                append(record)
                if len(batch) == self.batch_size:
                    break
        except Exception as exc:
            self.records_read += len(batch)
            self._stopped(exc)
            return batch
        self.records_read += len(batch)
        return batch


def decode(data: bytes, key: str) -> DecodedFile:
    """Decode one Currents object container file whole.

    A file that stops decoding part way (a truncated upload) returns the records decoded so far with
    ``error`` set. :class:`RecordBatches` does the same a batch at a time.

    :param data: the whole object.
    :param key: the object key, used in error messages.
    :raises DecodeError: when no record can be decoded: empty object, not Avro, or a schema without
        the fields every Currents type has.
    """
    batches = RecordBatches(data, key)
    records = [record for batch in batches for record in batch]
    return DecodedFile(records, batches.codec, batches.error)
