"""Parse and build the object keys Braze Currents writes to S3."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

PARTITION_FORMAT = "%Y-%m-%d-%H"

_FILE_RE = re.compile(r"^(?P<topic>.+)\+(?P<partition>\d+)\+(?P<offset>\d+)\.avro$")
_ZONE_RE = re.compile(r"^[a-z]{2,}-\d{2}$")


class KeyLayoutError(ValueError):
    """Raised for a key that does not name an event type and an hour partition."""


@dataclasses.dataclass(frozen=True)
class CurrentsKey:
    """What the path of one Currents object says about it.

    :param key: the full object key.
    :param event_type: the dotted type from the ``event_type=`` segment.
    :param partition: the UTC hour of the ``date=`` segment.
    :param layout: ``schema-zone``, ``version-env`` or ``unknown`` for the levels after ``date=``.
    :param schema: the schema id or version number, when the layout names one.
    :param zone: the zone or environment, when the layout names one.
    :param kafka_partition: the partition number in the file name, when it follows Kafka Connect style.
    :param offset: the start offset in the file name, when it follows Kafka Connect style.
    """

    key: str
    event_type: str
    partition: datetime
    layout: str
    schema: int | None = None
    zone: str | None = None
    kafka_partition: int | None = None
    offset: int | None = None


def partition_name(hour: datetime) -> str:
    """Return the ``date=`` value for an hour, e.g. ``2026-12-01-04``."""
    return hour.astimezone(UTC).strftime(PARTITION_FORMAT)


def parse_key(key: str) -> CurrentsKey:
    """Parse a Currents object key.

    Both documented layouts after the ``date=`` folder are recognised: ``<schema-id>/<zone>`` and
    ``version=<N>/<environment>``. Braze warns that naming may change, so any other levels still parse
    (``layout="unknown"``) as long as the ``event_type=`` and ``date=`` folders are there.

    :param key: the object key.
    :raises KeyLayoutError: when the key has no ``event_type=`` or ``date=`` folder, or is not ``.avro``.
    """
    parts = key.split("/")
    type_at = next((i for i, part in enumerate(parts) if part.startswith("event_type=")), None)
    if type_at is None or type_at + 1 >= len(parts) or not parts[type_at + 1].startswith("date="):
        raise KeyLayoutError(f"key {key!r} has no 'event_type=<type>/date=<YYYY-MM-DD-HH>' folders")
    if not key.endswith(".avro"):
        raise KeyLayoutError(f"key {key!r} is not an .avro file")
    event_type = parts[type_at][len("event_type=") :]
    if not event_type:
        raise KeyLayoutError(f"key {key!r} has an empty event_type= folder")
    date_value = parts[type_at + 1][len("date=") :]
    try:
        partition = datetime.strptime(date_value, PARTITION_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise KeyLayoutError(f"key {key!r} has date={date_value!r}, expected YYYY-MM-DD-HH") from None

    levels = parts[type_at + 2 : -1]
    layout, schema, zone = "unknown", None, None
    if len(levels) == 2 and levels[0].startswith("version=") and levels[0][8:].isdigit():
        layout, schema, zone = "version-env", int(levels[0][8:]), levels[1]
    elif len(levels) == 2 and levels[0].isdigit() and _ZONE_RE.match(levels[1]):
        layout, schema, zone = "schema-zone", int(levels[0]), levels[1]

    kafka_partition = offset = None
    match = _FILE_RE.match(parts[-1])
    if match:
        kafka_partition, offset = int(match["partition"]), int(match["offset"])
    return CurrentsKey(key, event_type, partition, layout, schema, zone, kafka_partition, offset)


def build_key(
    *,
    prefix: str,
    integration_id: str,
    event_type: str,
    hour: datetime,
    offset: int,
    kafka_partition: int = 0,
    cluster: str | None = "prod-01",
    layout: str = "version-env",
    zone: str = "us-01",
    schema: int = 6,
    padded_offset: bool = False,
) -> str:
    """Build a key the way Braze names Currents objects (used by the sample generator and tests)."""
    cluster_part = f"{cluster}." if cluster else ""
    topic = f"dataexport.{cluster_part}S3.integration.{integration_id}"
    levels = f"version={schema}/{zone}" if layout == "version-env" else f"{schema}/{zone}"
    offset_text = f"{offset:010d}" if padded_offset else str(offset)
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return (
        f"{root}{topic}/event_type={event_type}/date={partition_name(hour)}/{levels}/"
        f"{topic}+{kafka_partition}+{offset_text}.avro"
    )
