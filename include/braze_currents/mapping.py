"""Turn decoded Currents records into Segment ``track`` messages, as Braze's own connector shapes them."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from braze_currents import INTEGRATION_NAME, __version__
from braze_currents.catalog import field_lists

# Currents fields that always become top-level message fields instead of properties.
IDENTITY_FIELDS = frozenset({"id", "external_user_id", "time"})
MAX_MESSAGE_ID_LENGTH = 99


class MappingError(ValueError):
    """Raised for a mapping file that cannot be used; the message names the file, type and key."""


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """How one event type maps: its Segment name, context moves, dropped and renamed fields."""

    event: str
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()
    skip: frozenset[str] = IDENTITY_FIELDS
    rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
    constants: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    context_constants: tuple[tuple[tuple[str, ...], Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class EventMapping:
    """A whole mapping: one :class:`EventSpec` per event type."""

    specs: Mapping[str, EventSpec]
    source: str

    def spec(self, event_type: str) -> EventSpec:
        try:
            return self.specs[event_type]
        except KeyError:
            raise MappingError(f"{self.source}: no mapping for event type {event_type!r}") from None


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MappingError(f"{where} must be a list of field names")
    return value


def _as_dict(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise MappingError(f"{where} must map names to names")
    return value


def compile_mapping(data: Mapping[str, Any], source: str = "mapping") -> EventMapping:
    """Check a mapping document and compile it into per-type specs.

    :param data: the parsed mapping file (see ``include/segment_mapping.yaml``).
    :param source: where it came from, named in errors.
    """
    unknown = set(data) - {"defaults", "event_types"}
    if unknown:
        raise MappingError(
            f"{source}: unknown top-level keys {sorted(unknown)}; expected defaults, event_types"
        )
    defaults = data.get("defaults") or {}
    default_drop = _as_list(defaults.get("drop"), f"{source}: defaults.drop")
    default_rename = _as_dict(defaults.get("rename"), f"{source}: defaults.rename")
    types = data.get("event_types")
    if not isinstance(types, dict) or not types:
        raise MappingError(f"{source}: event_types must map each Currents event type to its mapping")
    specs: dict[str, EventSpec] = {}
    for event_type, entry in types.items():
        where = f"{source}: event_types.{event_type}"
        if event_type not in field_lists():
            raise MappingError(f"{where}: not a Currents event type that can be exported")
        if not isinstance(entry, dict):
            raise MappingError(f"{where} must be a mapping with at least 'event'")
        extra = set(entry) - {"event", "context", "drop", "rename"}
        if extra:
            raise MappingError(
                f"{where}: unknown keys {sorted(extra)}; expected event, context, drop, rename"
            )
        event = entry.get("event")
        if not isinstance(event, str) or not event.strip():
            raise MappingError(f"{where}.event must be a non-empty Segment event name")
        context = _as_dict(entry.get("context"), f"{where}.context")
        for path in context:
            if path.split(".")[0] in ("integration", "") or ".." in path:
                raise MappingError(f"{where}.context: path {path!r} is reserved or malformed")
        drop = set(default_drop) | set(_as_list(entry.get("drop"), f"{where}.drop"))
        rename = {**default_rename, **_as_dict(entry.get("rename"), f"{where}.rename")}
        specs[event_type] = EventSpec(
            event=event.strip(),
            context=tuple((field, tuple(path.split("."))) for path, field in context.items()),
            skip=frozenset(IDENTITY_FIELDS | drop | set(context.values())),
            rename=rename,
        )
    return EventMapping(specs, source)


def load_mapping(path: str | Path) -> EventMapping:
    """Read and compile a YAML mapping file.

    :param path: the mapping file.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise MappingError(f"cannot read mapping file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError(f"mapping file {path} must hold a mapping with defaults and event_types")
    return compile_mapping(data, str(path))


_FIRST_SECOND = -30_610_224_000  # 1000-01-01T00:00:00Z: strftime writes earlier years without 4 digits
_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z


def iso_timestamp(seconds: int, millis: int | None = None) -> str:
    """Format epoch seconds (or milliseconds, when given) as ISO-8601 UTC with a ``Z``.

    :raises ValueError: when the time falls outside the years 1000 to 9999, which ISO-8601 timestamps
        (and Segment) cannot carry.
    """
    if millis is not None:
        seconds, fraction = divmod(int(millis), 1000)
    else:
        fraction = 0
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:
        raise ValueError(f"time {seconds} is outside the years 1000 to 9999")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:03d}Z"


# A window's events fall in one hour: formatting each second once saves most strftime calls.
@functools.lru_cache(maxsize=8192)
def _second_timestamp(seconds: int) -> str:
    return iso_timestamp(seconds)


def integration_context() -> dict[str, str]:
    """Return ``context.integration``, naming this project and its version."""
    return {"name": INTEGRATION_NAME, "version": __version__}


def message_id(event_id: str, prefix: str = "") -> str:
    """Return the Segment messageId for a Currents event id, under 100 characters.

    :raises ValueError: when the prefixed id would be 100 characters or longer.
    """
    value = f"{prefix}{event_id}"
    if len(value) > MAX_MESSAGE_ID_LENGTH:
        raise ValueError(f"messageId would be {len(value)} characters; Segment requires under 100")
    return value


OVERRIDE_KEYS = {
    "event": "the Segment event name",
    "include": "only these Currents fields become properties (after drop)",
    "drop": "Currents fields never sent",
    "rename": "Currents field -> property name",
    "properties": "constant properties added to every event",
    "context": "constant context fields, by dotted path (e.g. app.name: My App)",
}


def check_overrides(overrides: Any, where: str) -> dict[str, dict[str, Any]]:
    """Check a Current's ``mapping_overrides`` and return them keyed by dotted event type (or ``all``).

    :param overrides: ``{"all" | event type: {event, include, drop, rename, properties, context}}``.
    :param where: names the setting in errors, e.g. ``Current 'main'.mapping_overrides``.
    :raises MappingError: naming the entry and key at fault.
    """
    from braze_currents.catalog import UnknownEventTypeError, canonical_event_type

    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise MappingError(f"{where}: a mapping of 'all' or event types to overrides")
    checked: dict[str, dict[str, Any]] = {}
    for name, entry in overrides.items():
        try:
            event_type = "all" if name == "all" else canonical_event_type(str(name))
        except UnknownEventTypeError as exc:
            raise MappingError(f"{where}: {exc}") from None
        here = f"{where}.{name}"
        if not isinstance(entry, dict):
            raise MappingError(f"{here}: a mapping with keys among {', '.join(OVERRIDE_KEYS)}")
        unknown = sorted(set(entry) - set(OVERRIDE_KEYS))
        if unknown:
            raise MappingError(f"{here}: unknown keys {unknown}; allowed: {', '.join(OVERRIDE_KEYS)}")
        if "event" in entry:
            if event_type == "all":
                raise MappingError(f"{here}.event: an event name belongs to one event type, not 'all'")
            if not isinstance(entry["event"], str) or not entry["event"].strip():
                raise MappingError(f"{here}.event: a non-empty Segment event name")
        for key in ("include", "drop"):
            _as_list(entry.get(key), f"{here}.{key}")
        _as_dict(entry.get("rename"), f"{here}.rename")
        for key in ("properties", "context"):
            value = entry.get(key, {})
            if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
                raise MappingError(f"{here}.{key}: a mapping of names to values")
        for path in entry.get("context", {}):
            if path.split(".")[0] == "integration" or ".." in path or path.endswith("."):
                raise MappingError(f"{here}.context: path {path!r} is reserved or malformed")
        checked[event_type] = entry
    return checked


def apply_overrides(mapping: EventMapping, overrides: Mapping[str, Mapping[str, Any]]) -> EventMapping:
    """Return the mapping with a Current's overrides laid over it (``all`` first, then per type).

    :param mapping: the mapping from the mapping file.
    :param overrides: checked by :func:`check_overrides`.
    """
    if not overrides:
        return mapping
    shared = overrides.get("all", {})
    specs = {}
    for event_type, spec in mapping.specs.items():
        own = overrides.get(event_type, {})
        drop = set(shared.get("drop", [])) | set(own.get("drop", []))
        skip = set(spec.skip) | drop
        include = own.get("include", shared.get("include"))
        if include is not None:
            fields = {field["name"] for field in field_lists().get(event_type, [])}
            skip |= fields - set(include)
        context = {**shared.get("context", {}), **own.get("context", {})}
        specs[event_type] = dataclasses.replace(
            spec,
            event=own.get("event", spec.event).strip(),
            skip=frozenset(skip),
            rename={**spec.rename, **shared.get("rename", {}), **own.get("rename", {})},
            constants={**spec.constants, **shared.get("properties", {}), **own.get("properties", {})},
            context_constants=spec.context_constants
            + tuple((tuple(path.split(".")), value) for path, value in context.items()),
        )
    return EventMapping(specs, f"{mapping.source} with the Current's mapping_overrides")


class MessageBuilder:
    """Build the ``track`` messages of one event type, with the per-type lookups done once.

    :param spec: the mapping of the event type.
    :param message_id_prefix: prepended to the Currents id to form the messageId.
    :param integration: ``context.integration``; defaults to this project's name and version.
    """

    def __init__(
        self, spec: EventSpec, *, message_id_prefix: str = "", integration: Mapping[str, str] | None = None
    ) -> None:
        self.spec = spec
        self.prefix = message_id_prefix
        self.integration = integration or integration_context()

    def build(
        self, record: Mapping[str, Any], user_id: str | None, *, anonymous_id: str | None = None
    ) -> dict[str, Any]:
        """Build one message from a decoded Currents record.

        :param record: the decoded event.
        :param user_id: the identity to send (the stripped external user id).
        :param anonymous_id: without ``user_id``, the ``anonymousId`` to send (the Braze user id).
        """
        spec = self.spec
        skip, rename = spec.skip, spec.rename
        if rename:
            properties = {rename.get(k, k): v for k, v in record.items() if v is not None and k not in skip}
        else:
            properties = {k: v for k, v in record.items() if v is not None and k not in skip}
        context: dict[str, Any] = {"integration": self.integration}
        for field, path in spec.context:
            value = record.get(field)
            if value is None or value == "":
                continue
            node = context
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        for path, value in spec.context_constants:
            node = context
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        if spec.constants:
            properties.update(spec.constants)
        seconds, millis = record["time"], record.get("time_ms")
        if millis is not None:
            timestamp = iso_timestamp(seconds, millis)
        else:
            timestamp = _second_timestamp(seconds)
        event_id = record["id"]
        message_id = f"{self.prefix}{event_id}"
        if len(message_id) > MAX_MESSAGE_ID_LENGTH:
            raise ValueError(f"messageId would be {len(message_id)} characters; Segment requires under 100")
        if user_id is None:
            return {
                "type": "track",
                "anonymousId": anonymous_id,
                "event": spec.event,
                "messageId": message_id,
                "timestamp": timestamp,
                "properties": properties,
                "context": context,
            }
        return {
            "type": "track",
            "userId": user_id,
            "event": spec.event,
            "messageId": message_id,
            "timestamp": timestamp,
            "properties": properties,
            "context": context,
        }


def build_message(
    record: Mapping[str, Any],
    spec: EventSpec,
    *,
    user_id: str,
    message_id_prefix: str = "",
    integration: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Build one Segment ``track`` message from a decoded Currents record.

    :param record: the decoded event.
    :param spec: the mapping of its event type.
    :param user_id: the identity to send (the stripped external user id).
    :param message_id_prefix: prepended to the Currents id to form the messageId.
    :param integration: ``context.integration``; defaults to this project's name and version.
    """
    builder = MessageBuilder(spec, message_id_prefix=message_id_prefix, integration=integration)
    return builder.build(record, user_id)
