"""Event filters: allow and deny lists and a pandas query, each drop counted by filter."""

from __future__ import annotations

from collections import Counter

import pytest

from braze_currents.filters import EventFilters, FilterError, check_filters

PUSH = "users.messages.pushnotification.Send"
RECORDS = [
    {"campaign_id": "c1", "canvas_id": None, "platform": "ios"},
    {"campaign_id": "c3", "canvas_id": None, "platform": "ios"},
    {"campaign_id": None, "canvas_id": "v9", "platform": "ios"},
    {"campaign_id": None, "canvas_id": "v1", "platform": "android"},
    {"campaign_id": "c2", "canvas_id": None, "platform": None},
]


def _apply(filters: EventFilters, rows: list[int]) -> tuple[list[int], Counter]:
    """The rows that pass, and the number held back by each filter."""
    reasons = filters.reasons(RECORDS, rows, PUSH)
    kept = [row for row, reason in zip(rows, reasons, strict=True) if reason is None]
    return kept, Counter(reason for reason in reasons if reason is not None)


def test_lists_and_query_hold_back_events_and_count_each_filter():
    filters = check_filters(
        {
            "campaign_ids": {"allow": ["c1", "c2"]},
            "canvas_ids": {"deny": ["v9"]},
            "query": "platform == 'ios'",
        },
        "here",
    )
    kept, dropped = _apply(filters, [0, 1, 2, 3, 4])
    assert kept == [0]
    assert dropped == {"filter_campaign_id": 1, "filter_canvas_id": 1, "filter_query": 2}


def test_only_the_given_rows_are_tested_and_null_fields_pass_id_lists():
    filters = check_filters({"campaign_ids": {"deny": ["c3"]}}, "here")
    kept, dropped = _apply(filters, [1, 2, 3])
    assert kept == [2, 3] and dropped == {"filter_campaign_id": 1}


def test_no_filters_is_falsy_and_passes_everything():
    filters = check_filters(None, "here")
    assert not filters


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"campaign_id": {"deny": ["x"]}}, "unknown keys ['campaign_id']"),
        ({"campaign_ids": ["x"]}, "allow: [ids] and/or deny: [ids]"),
        ({"canvas_ids": {"allow": "x"}}, "canvas_ids.allow: a list of ids"),
        ({"query": "platfrom == 'ios'"}, "name 'platfrom' is not defined"),
        ({"query": "platform == "}, "not a usable pandas expression"),
        ({"query": ""}, "a pandas expression"),
    ],
)
def test_bad_filters_name_the_key_and_the_fix(value, words):
    with pytest.raises(FilterError) as caught:
        check_filters(value, "Current 'web'.filters")
    assert str(caught.value).startswith("Current 'web'.filters")
    assert words in str(caught.value)
