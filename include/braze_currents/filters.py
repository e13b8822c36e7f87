"""A Current's event filters: allow and deny lists of campaign, Canvas and app group ids, and a query.

Filters run with pandas on the events of a batch that would otherwise be sent; each event they hold
back is counted under the filter that dropped it (``filter_campaign_id``, ``filter_canvas_id``,
``filter_app_group_id``, ``filter_query``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

# Config key -> the Currents field it tests.
LIST_FIELDS = {"campaign_ids": "campaign_id", "canvas_ids": "canvas_id", "app_group_ids": "app_group_id"}
FILTER_KEYS = (*LIST_FIELDS, "query")


class FilterError(ValueError):
    """A filter setting that cannot be used; the message names the key."""


@dataclasses.dataclass(frozen=True)
class IdList:
    """Allow and deny lists for one field. Events whose field is null are not affected."""

    field: str
    allow: frozenset[str] | None
    deny: frozenset[str]


@dataclasses.dataclass(frozen=True)
class EventFilters:
    """The checked filters of one Current."""

    lists: tuple[IdList, ...] = ()
    query: str | None = None

    def __bool__(self) -> bool:
        return bool(self.lists or self.query)

    def reasons(
        self, records: Sequence[Mapping[str, Any]], rows: Sequence[int], event_type: str
    ) -> list[str | None]:
        """Return, per row, the first filter that holds it back (``filter_<field>`` or
        ``filter_query``), or None when it passes.

        :param records: the batch's decoded records.
        :param rows: the rows to test (those otherwise sent), in order.
        :param event_type: the batch's event type (its schema names the query's columns).
        """
        import numpy as np
        import pandas as pd

        from braze_currents.blocks import column

        held: list[str | None] = [None] * len(rows)
        keep = np.ones(len(rows), dtype=bool)
        for rule in self.lists:
            values = pd.Series(_take(column(records, rule.field), rows), dtype=object)
            present = values.notna().to_numpy()
            text = values.astype(str)
            bad = np.zeros(len(rows), dtype=bool)
            if rule.allow is not None:
                bad |= present & ~text.isin(rule.allow).to_numpy()
            if rule.deny:
                bad |= present & text.isin(rule.deny).to_numpy()
            for position in np.flatnonzero(bad & keep).tolist():
                held[position] = f"filter_{rule.field}"
            keep &= ~bad
        if self.query and keep.any():
            kept_rows = [row for row, ok in zip(rows, keep, strict=True) if ok]
            columns = _columns(event_type)
            values = {name: column(records, name) for name in columns}
            frame = pd.DataFrame.from_records(
                [{name: values[name][row] for name in columns} for row in kept_rows], columns=columns
            )
            try:
                passed = frame.eval(self.query, engine="python")
            except Exception as exc:  # pandas raises many types for a query that does not fit the data
                raise FilterError(f"filters.query {self.query!r} failed on {event_type}: {exc}") from None
            passed = pd.Series(passed).fillna(False).astype(bool).to_numpy()
            positions = np.flatnonzero(keep)
            for position in positions[~passed].tolist():
                held[position] = "filter_query"
        return held


def _take(values: Sequence[Any], rows: Sequence[int]) -> list[Any]:
    return [values[row] for row in rows]


@functools.cache
def _columns(event_type: str) -> tuple[str, ...]:
    from braze_currents.catalog import field_lists

    return tuple(field["name"] for field in field_lists().get(event_type, []))


@functools.cache
def _all_columns() -> tuple[str, ...]:
    from braze_currents.catalog import field_lists

    return tuple(sorted({field["name"] for fields in field_lists().values() for field in fields}))


def _ids(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str | int) for item in value):
        raise FilterError(f"{where}: a list of ids")
    return frozenset(str(item) for item in value)


def check_filters(value: Any, where: str) -> EventFilters:
    """Check a Current's ``filters`` setting.

    :param value: ``{campaign_ids|canvas_ids|app_group_ids: {allow: [...], deny: [...]}, query: "..."}``.
    :param where: names the setting in errors.
    :raises FilterError: naming the key at fault and what to write instead.
    """
    if value is None:
        return EventFilters()
    if not isinstance(value, dict):
        raise FilterError(f"{where}: a mapping with keys among {', '.join(FILTER_KEYS)}")
    unknown = sorted(str(key) for key in set(value) - set(FILTER_KEYS))
    if unknown:
        raise FilterError(f"{where}: unknown keys {unknown}; allowed: {', '.join(FILTER_KEYS)}")
    lists = []
    for key, field in LIST_FIELDS.items():
        rule = value.get(key)
        if rule is None:
            continue
        here = f"{where}.{key}"
        if not isinstance(rule, dict) or not set(rule) <= {"allow", "deny"} or not rule:
            raise FilterError(f"{here}: write allow: [ids] and/or deny: [ids]")
        allow = _ids(rule["allow"], f"{here}.allow") if "allow" in rule else None
        deny = _ids(rule.get("deny", []), f"{here}.deny")
        lists.append(IdList(field, allow, deny))
    query = value.get("query")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise FilterError(f"{where}.query: a pandas expression, e.g. \"platform == 'ios'\"")
        import pandas as pd

        try:  # names and syntax, on an empty frame with every Currents field as a column
            pd.DataFrame(columns=list(_all_columns())).eval(query, engine="python")
        except Exception as exc:
            raise FilterError(f"{where}.query: {query!r} is not a usable pandas expression: {exc}") from None
    return EventFilters(tuple(lists), query)
