"""Gather what the page shows: each window's counts from its report and the state of its latest run.

Pure Python over the dead-letter store and plain run records, so it is tested without a server.
Reports hold counts, keys and reasons, never event contents; so does everything built here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from braze_currents.keys import partition_name
from braze_currents.storage import Store
from braze_currents.window import WindowError, floor_hour, resolve_window

# Where a report may state its late files (from earlier hours, sent by this run): a count or a list.
LATE_KEYS = ("late", "late_files")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The few fields of one DAG run the page needs."""

    run_id: str
    state: str | None
    logical_date: datetime | None
    run_after: datetime | None
    conf: Mapping[str, Any] | None = None

    @property
    def window(self) -> datetime | None:
        """Return the hour this run processes, resolved the way the DAG resolves it."""
        param = (self.conf or {}).get("window") or None
        try:
            return resolve_window(
                param=str(param) if param else None, logical_date=self.logical_date, now=self.run_after
            )
        except WindowError:
            return None


@dataclasses.dataclass(frozen=True)
class WindowView:
    """One window as the page shows it: its report's counts (if any) and its latest run (if any)."""

    window: datetime
    counts: dict[str, Any] | None
    balanced: bool | None
    finished_at: str | None
    run: RunRecord | None
    runs: int
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class CurrentView:
    """One Current: its DAG and its recent windows, newest first."""

    name: str
    dag_id: str
    dead_letters: str
    windows: list[WindowView]
    problem: str | None = None

    @property
    def has_late(self) -> bool:
        return any(view.counts is not None and "late" in view.counts for view in self.windows)

    @property
    def dropped_reasons(self) -> list[str]:
        reasons = {reason for view in self.windows if view.counts for reason in view.counts["dropped"]}
        return sorted(reasons)


def _count(value: Any) -> int:
    """Read a count that may be a number, a list of items or a mapping of counts."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple):
        return len(value)
    if isinstance(value, dict):
        return sum(_count(item) for item in value.values())
    return 0


def headline_counts(report: Mapping[str, Any]) -> dict[str, Any]:
    """Return a window's headline counts from its report: what a person checks first.

    ``files``, ``events_read``, ``dropped`` (by reason), ``dropped_total``, ``sent``, ``dead_lettered``
    and ``batches``; ``late`` (files of earlier hours that landed after their own window had run, sent
    by this run) only when the report states it.

    :param report: the parsed ``report.json`` of a window.
    """
    counts = report.get("counts", {})
    dropped = {str(reason): _count(n) for reason, n in sorted(counts.get("dropped", {}).items())}
    out: dict[str, Any] = {
        "files": _count(counts.get("files", 0)),
        "events_read": _count(counts.get("events_read", 0)),
        "dropped": dropped,
        "dropped_total": sum(dropped.values()),
        "sent": _count(counts.get("sent", 0)),
        "dead_lettered": _count(counts.get("dead_lettered", 0)),
        "batches": _count(counts.get("batches", 0)),
    }
    for source in (counts, report):
        found = [key for key in LATE_KEYS if key in source]
        if found:
            out["late"] = _count(source[found[0]])
            break
    return out


def report_name(current_name: str, hour: datetime) -> str:
    """Return the name of a window's report inside the dead-letter location."""
    return f"{current_name}/date={partition_name(hour)}/report.json"


def read_report(store: Store, current_name: str, hour: datetime) -> dict[str, Any] | None:
    """Return a window's parsed report, or None when the window has none yet.

    :raises ValueError: when the report exists but is not a JSON object.
    """
    name = report_name(current_name, hour)
    if not store.exists(name):
        return None
    report = orjson.loads(store.get(name))
    if not isinstance(report, dict):
        raise ValueError(f"{store.uri}/{name} is not a JSON object")
    return report


def recent_windows(
    current_name: str,
    store: Store,
    runs: Iterable[RunRecord],
    *,
    now: datetime | None = None,
    scan_hours: int = 24,
    limit: int = 24,
) -> list[WindowView]:
    """Return a Current's most recent windows that have a report or a run, newest first.

    The windows looked at are those of the given runs and the last ``scan_hours`` hours (so a report
    written by a run the database no longer has still shows).

    :param current_name: the Current's name (the first folder in its dead-letter location).
    :param store: the Current's dead-letter location.
    :param runs: the DAG's recent runs, any order.
    :param now: the current time (for tests).
    :param scan_hours: how many past hours to look for reports in, besides the runs' windows.
    :param limit: at most this many windows.
    """
    latest = floor_hour(now or datetime.now(UTC))
    by_window: dict[datetime, list[RunRecord]] = {}
    for run in runs:
        if run.window is not None:
            by_window.setdefault(run.window, []).append(run)
    candidates = set(by_window) | {latest - timedelta(hours=n) for n in range(scan_hours + 1)}

    views = []
    for hour in sorted(candidates, reverse=True):
        if len(views) == limit:
            break
        problem = None
        try:
            report = read_report(store, current_name, hour)
        except ValueError as exc:
            report, problem = None, f"unreadable report: {exc}"
        window_runs = by_window.get(hour, [])
        if report is None and not window_runs and problem is None:
            continue
        latest_run = max(window_runs, key=_run_order) if window_runs else None
        views.append(
            WindowView(
                window=hour,
                counts=headline_counts(report) if report is not None else None,
                balanced=report.get("balanced") if report is not None else None,
                finished_at=report.get("finished_at") if report is not None else None,
                run=latest_run,
                runs=len(window_runs),
                problem=problem,
            )
        )
    return views


def _run_order(run: RunRecord) -> datetime:
    return run.run_after or run.logical_date or datetime.min.replace(tzinfo=UTC)


def hourly_totals(windows: Iterable[WindowView]) -> list[tuple[datetime, int, int, int]]:
    """Return (hour, sent, dropped, dead-lettered) for each window with a report, oldest first."""
    rows = [
        (view.window, view.counts["sent"], view.counts["dropped_total"], view.counts["dead_lettered"])
        for view in windows
        if view.counts is not None
    ]
    return sorted(rows)
