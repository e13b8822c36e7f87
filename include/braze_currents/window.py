"""Which hour a run processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class WindowError(ValueError):
    """Raised for a window parameter that does not name an hour."""


def floor_hour(moment: datetime) -> datetime:
    """Return the UTC hour that contains ``moment``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def parse_hour(text: str) -> datetime:
    """Parse ``2026-12-01T04``, ``2026-12-01T04:00:00Z``, ``2026-12-01-04`` or ``2026-12-01 04:00``.

    :raises WindowError: when the text does not name an hour.
    """
    value = text.strip()
    candidates = [value.replace("Z", "+00:00"), value + ":00"]
    if len(value) == 13 and value[10] == "-":  # the date= partition spelling
        candidates.append(f"{value[:10]}T{value[11:]}:00")
    for candidate in candidates:
        try:
            moment = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if moment.minute or moment.second or moment.microsecond:
            raise WindowError(f"window {text!r} is not on the hour; give e.g. 2026-12-01T04:00:00Z")
        return floor_hour(moment)
    raise WindowError(f"window {text!r} is not an hour; give e.g. 2026-12-01T04:00:00Z")


def resolve_window(
    *, param: str | None, logical_date: datetime | None, now: datetime | None = None
) -> datetime:
    """Return the start H of the window [H, H+1) a run processes.

    The ``window`` param wins; otherwise the run's logical date names the hour (scheduled runs,
    backfills and ``airflow dags test D H`` alike); a manual run without a logical date takes the
    last full hour.

    :param param: the run's ``window`` param, if set.
    :param logical_date: the run's logical date, if it has one.
    :param now: the current time (for tests).
    """
    if param:
        return parse_hour(param)
    if logical_date is not None:
        return floor_hour(logical_date)
    return floor_hour(now or datetime.now(UTC)) - timedelta(hours=1)
