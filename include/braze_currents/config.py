"""Read and check the exports config: one entry per Current, each becoming one DAG."""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from braze_currents.catalog import UnknownEventTypeError, all_event_types, canonical_event_type

CONFIG_ENV = "BRAZE_CURRENTS_CONFIG"
_NAME_RE = re.compile(r"^[a-z0-9_]{1,60}$")
_TOP_KEYS = {"currents"}
_KEYS = {
    "name": "lower-case letters, digits and underscores; the DAG id is currents_to_segment_<name>",
    "start_date": "the first hour to export, ISO-8601 UTC, e.g. 2026-12-01T00:00:00Z",
    "source": "where Braze writes: conn_id (an AWS connection), bucket, prefix",
    "event_types": "'all' or a list of Currents event types",
    "segment": "conn_id of the Segment connection and region (us or eu)",
    "staging": "folder or s3:// location for staged chunks",
    "dead_letters": "folder or s3:// location for dead letters and reports",
    "state": "folder or s3:// location for the delivery ledger",
    "mapping_file": "the event mapping file, relative to this config file",
    "mapping_overrides": "per event type (or all): event, include, drop, rename, properties, context",
    "filters": "allow/deny lists of campaign_ids, canvas_ids, app_group_ids, and a pandas query",
    "anonymous_users": "send events without an external id with anonymousId = Braze user id (default false)",
    "message_id_prefix": "text put before each Currents id to form the Segment messageId",
    "integrations": "the Segment integrations object of every batch",
    "chunk_events": "about how many events one upload task sends",
    "upload_concurrency": "requests in flight per upload task",
    "prepare_workers": "processes that read files in the prepare task (default 2; 1 reads them in the task)",
    "rate_limit": "requests_per_second and/or events_per_second, a cap shared by upload tasks in one process",
    "retries": "Airflow retries per task",
    "catchup": "whether the scheduler creates runs for past hours since start_date",
    "max_active_runs": "windows processed at once",
    "tags": "extra DAG tags",
    "on_dead_letters": "'fail' (default: a window with dead letters fails, visibly) or 'warn'",
    "keep_staged": "keep staged chunks after their window is acknowledged (they hold personal data)",
    "staged_retention_hours": "hours staged chunks are kept after their window is acknowledged (default 0)",
    "lookback_hours": "earlier hour partitions each run checks for files that landed late (default 3)",
    "dry_run": "stage the exact request bodies and report what would be sent; send nothing (default false)",
}
_SOURCE_KEYS = {"conn_id", "bucket", "prefix"}
_SEGMENT_KEYS = {"conn_id", "region"}
_RATE_KEYS = {"requests_per_second", "events_per_second"}
REGIONS = ("us", "eu")
_START_EXAMPLE = "start_date: '2026-12-01T00:00:00Z'"


class ConfigError(ValueError):
    """A config problem; the message names the Current, the key and what to do."""


@dataclasses.dataclass(frozen=True)
class CurrentConfig:
    """One Current's export settings, checked."""

    name: str
    start_date: datetime
    source_conn_id: str
    bucket: str
    prefix: str
    event_types: tuple[str, ...]
    segment_conn_id: str
    region: str
    staging: str
    dead_letters: str
    state: str
    mapping_file: str
    message_id_prefix: str = ""
    integrations: dict[str, Any] = dataclasses.field(default_factory=lambda: {"Braze": False})
    chunk_events: int = 50_000
    upload_concurrency: int = 4
    prepare_workers: int = 2
    retries: int = 3
    catchup: bool = False
    max_active_runs: int = 4
    tags: tuple[str, ...] = ()
    on_dead_letters: str = "fail"
    keep_staged: bool = False
    staged_retention_hours: int = 0
    lookback_hours: int = 3
    dry_run: bool = False
    mapping_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    filters: dict[str, Any] = dataclasses.field(default_factory=dict)
    anonymous_users: bool = False
    requests_per_second: float | None = None
    events_per_second: float | None = None

    @property
    def dag_id(self) -> str:
        return f"currents_to_segment_{self.name}"


def default_config_path() -> Path:
    """Return the config file: ``$BRAZE_CURRENTS_CONFIG`` or ``include/exports.yaml`` of this project."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path(__file__).resolve().parents[1] / "exports.yaml"


def _location(value: Any, where: str, base: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: give a folder path or an s3://bucket/prefix location")
    value = value.strip()
    if value.startswith("s3://"):
        if len(value) <= 5 or value[5] == "/":
            raise ConfigError(f"{where}: {value!r} names no bucket; write s3://<bucket>/<prefix>")
        return value.rstrip("/")
    if "://" in value:
        raise ConfigError(f"{where}: {value!r}; only local folders and s3:// locations are supported")
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return str(path if path.is_absolute() else (base / path).resolve())


def _int(entry: dict, key: str, where: str, default: int, low: int, high: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}.{key}: must be a whole number from {low} to {high}, got {value!r}")
    return value


def _bool(entry: dict, key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: write true or false (without quotes), got {value!r}")
    return value


def _rate_limit(entry: dict, where: str) -> tuple[float | None, float | None]:
    """Check ``rate_limit`` and return (requests per second, events per second), None where uncapped."""
    limit = entry.get("rate_limit")
    if limit is None:
        return None, None
    if not isinstance(limit, dict) or not limit:
        raise ConfigError(
            f"{where}.rate_limit: a mapping with requests_per_second and/or events_per_second, "
            "e.g. {events_per_second: 1000}"
        )
    _unknown(set(limit), _RATE_KEYS, f"{where}.rate_limit")
    caps = []
    for key in ("requests_per_second", "events_per_second"):
        value = limit.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1_000_000
        ):
            raise ConfigError(
                f"{where}.rate_limit.{key}: a number above 0 and at most 1000000, got {value!r}"
            )
        caps.append(None if value is None else float(value))
    return caps[0], caps[1]


def _unknown(keys: set, allowed: set, where: str) -> None:
    unknown = sorted(str(key) for key in keys - allowed)
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{where}: unknown key {', '.join(hints)}; allowed keys: {', '.join(sorted(allowed))}"
        )


def parse_current(entry: Any, index: int, base: Path) -> CurrentConfig:
    """Check one entry of ``currents`` and return its settings.

    :param entry: the parsed YAML mapping.
    :param index: its position, for error messages before its name is known.
    :param base: the folder relative paths are resolved against.
    """
    if not isinstance(entry, dict):
        raise ConfigError(f"currents[{index}]: each Current must be a mapping with at least name and source")
    name = entry.get("name")
    where = f"currents[{index}]"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}.name: {_KEYS['name']}; got {name!r}")
    where = f"Current {name!r}"
    _unknown(set(entry), set(_KEYS), where)

    start = entry.get("start_date")
    if start is None:
        raise ConfigError(f"{where}.start_date: missing; add the first hour to export, e.g. {_START_EXAMPLE}")
    if isinstance(start, datetime):
        start_date = start if start.tzinfo else start.replace(tzinfo=UTC)
    else:
        try:
            start_date = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{where}.start_date: {_KEYS['start_date']}; got {start!r}") from None
        if start_date.tzinfo is None:
            start_date = start_date.replace(tzinfo=UTC)
    start_date = start_date.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    source = entry.get("source")
    if source is None:
        raise ConfigError(f"{where}.source: missing; add e.g. source: {{bucket: my-braze-currents}}")
    if not isinstance(source, dict):
        raise ConfigError(f"{where}.source: {_KEYS['source']}; got {source!r}")
    _unknown(set(source), _SOURCE_KEYS, f"{where}.source")
    bucket = source.get("bucket")
    if bucket is None:
        raise ConfigError(
            f"{where}.source.bucket: missing; add the S3 bucket Braze writes to under source, "
            "e.g. source: {bucket: my-braze-currents}"
        )
    if not isinstance(bucket, str) or not re.match(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", bucket):
        raise ConfigError(
            f"{where}.source.bucket: {bucket!r} is not an S3 bucket name; write the bucket alone "
            "(3-63 lower-case letters, digits, dots, hyphens), without s3:// or a folder"
        )
    prefix = source.get("prefix", "currents")
    if not isinstance(prefix, str):
        raise ConfigError(f"{where}.source.prefix: the folder set on the Current, e.g. 'currents'")

    raw_types = entry.get("event_types", "all")
    if raw_types == "all":
        event_types = tuple(all_event_types())
    elif isinstance(raw_types, list) and raw_types:
        try:
            event_types = tuple(dict.fromkeys(canonical_event_type(str(t)) for t in raw_types))
        except UnknownEventTypeError as exc:
            raise ConfigError(f"{where}.event_types: {exc}") from None
    else:
        raise ConfigError(f"{where}.event_types: {_KEYS['event_types']}; got {raw_types!r}")

    segment = entry.get("segment", {})
    if not isinstance(segment, dict):
        raise ConfigError(f"{where}.segment: {_KEYS['segment']}")
    _unknown(set(segment), _SEGMENT_KEYS, f"{where}.segment")
    region = segment.get("region", "us")
    if region not in REGIONS:
        raise ConfigError(
            f"{where}.segment.region: must be 'us' or 'eu' (the region of the Segment workspace), "
            f"got {region!r}"
        )

    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "braze_currents" / name
    prefix_value = entry.get("message_id_prefix", "")
    if not isinstance(prefix_value, str) or len(prefix_value) > 60:
        raise ConfigError(f"{where}.message_id_prefix: at most 60 characters, so messageIds stay under 100")
    integrations = entry.get("integrations", {"Braze": False})
    if not isinstance(integrations, dict):
        raise ConfigError(f"{where}.integrations: a mapping such as {{Braze: false}}")
    mapping_file = entry.get("mapping_file", "segment_mapping.yaml")
    from braze_currents.mapping import MappingError, check_overrides

    try:
        overrides = check_overrides(entry.get("mapping_overrides"), f"{where}.mapping_overrides")
    except MappingError as exc:
        raise ConfigError(str(exc)) from None
    from braze_currents.filters import FilterError, check_filters

    try:
        check_filters(entry.get("filters"), f"{where}.filters")
    except FilterError as exc:
        raise ConfigError(str(exc)) from None
    on_dead_letters = entry.get("on_dead_letters", "fail")
    if on_dead_letters not in ("fail", "warn"):
        raise ConfigError(f"{where}.on_dead_letters: {_KEYS['on_dead_letters']}; got {on_dead_letters!r}")
    tags = entry.get("tags", [])
    if not isinstance(tags, list):
        raise ConfigError(f"{where}.tags: a list of strings")
    requests_per_second, events_per_second = _rate_limit(entry, where)
    return CurrentConfig(
        name=name,
        start_date=start_date,
        source_conn_id=str(source.get("conn_id", "braze_currents_s3")),
        bucket=bucket,
        prefix=prefix.strip("/"),
        event_types=event_types,
        segment_conn_id=str(segment.get("conn_id", "segment_default")),
        region=region,
        staging=_location(entry.get("staging", str(home / "staging")), f"{where}.staging", base),
        dead_letters=_location(
            entry.get("dead_letters", str(home / "dead_letters")), f"{where}.dead_letters", base
        ),
        state=_location(entry.get("state", str(home / "state")), f"{where}.state", base),
        mapping_file=_location(mapping_file, f"{where}.mapping_file", base),
        message_id_prefix=prefix_value,
        integrations=integrations,
        chunk_events=_int(entry, "chunk_events", where, 50_000, 2_500, 1_000_000),
        upload_concurrency=_int(entry, "upload_concurrency", where, 4, 1, 32),
        prepare_workers=_int(entry, "prepare_workers", where, 2, 1, 16),
        retries=_int(entry, "retries", where, 3, 0, 20),
        catchup=_bool(entry, "catchup", where),
        max_active_runs=_int(entry, "max_active_runs", where, 4, 1, 64),
        tags=tuple(str(tag) for tag in tags),
        on_dead_letters=on_dead_letters,
        keep_staged=_bool(entry, "keep_staged", where),
        staged_retention_hours=_int(entry, "staged_retention_hours", where, 0, 0, 24 * 30),
        lookback_hours=_int(entry, "lookback_hours", where, 3, 0, 72),
        dry_run=_bool(entry, "dry_run", where),
        mapping_overrides=overrides,
        filters=dict(entry.get("filters") or {}),
        anonymous_users=_bool(entry, "anonymous_users", where),
        requests_per_second=requests_per_second,
        events_per_second=events_per_second,
    )


@dataclasses.dataclass(frozen=True)
class ConfigCheck:
    """The outcome of checking a config file: the Currents that passed, one message per one that did not."""

    path: Path
    currents: list[CurrentConfig]
    errors: list[str]

    def summary(self) -> str:
        """Return one message listing every problem, for an import error or a log line."""
        count = len(self.errors)
        lines = [f"{self.path}: {count} problem{'s' if count > 1 else ''} in the exports config"]
        return "\n".join([*lines, *(f"- {error}" for error in self.errors)])


def check_config(path: str | Path | None = None) -> ConfigCheck:
    """Check every Current of the config file on its own, so one bad entry does not hide the others.

    A file that cannot be read or has no ``currents:`` list gives a single error and no Currents. A
    Current whose name an earlier entry already uses is an error; the earlier entry keeps its DAG.

    :param path: the file; defaults to :func:`default_config_path`.
    """
    import yaml

    config_path = Path(path) if path else default_config_path()
    try:
        data = yaml.safe_load(config_path.read_text("utf-8"))
    except OSError as exc:
        return ConfigCheck(config_path, [], [f"cannot read the exports config: {exc.strerror}"])
    except yaml.YAMLError as exc:
        return ConfigCheck(config_path, [], [f"not valid YAML: {exc}"])
    if not isinstance(data, dict) or not isinstance(data.get("currents"), list):
        return ConfigCheck(
            config_path, [], ["expected a top-level 'currents:' list with one entry per Current"]
        )

    errors = []
    try:
        _unknown(set(data), _TOP_KEYS, "top level")
    except ConfigError as exc:
        errors.append(str(exc))
    currents: list[CurrentConfig] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(data["currents"]):
        try:
            current = parse_current(entry, index, config_path.parent)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if current.name in first_index:
            errors.append(
                f"Current {current.name!r} (currents[{index}]).name: already used by "
                f"currents[{first_index[current.name]}]; give each Current its own name "
                f"(the DAG id is currents_to_segment_<name>)"
            )
            continue
        first_index[current.name] = index
        currents.append(current)
    return ConfigCheck(config_path, currents, errors)


def load_config(path: str | Path | None = None) -> list[CurrentConfig]:
    """Read the config file and check every Current in it.

    :param path: the file; defaults to :func:`default_config_path`.
    :raises ConfigError: naming the file, and for each problem the Current, the key and the fix.
    """
    check = check_config(path)
    if check.errors:
        raise ConfigError(check.summary())
    return check.currents
