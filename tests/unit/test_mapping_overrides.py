"""A Current's mapping overrides, laid over the mapping file."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from braze_currents.config import ConfigError, parse_current
from braze_currents.generator import generate_records
from braze_currents.mapping import (
    MappingError,
    MessageBuilder,
    apply_overrides,
    check_overrides,
    load_mapping,
)

ROOT = Path(__file__).resolve().parents[2]
OPEN = "users.messages.email.Open"
SEND = "users.messages.email.Send"


@pytest.fixture(scope="module")
def mapping():
    return load_mapping(ROOT / "include" / "segment_mapping.yaml")


def _record(event_type: str) -> dict:
    (record,) = generate_records(
        event_type, 1, hour=datetime(2026, 12, 1, tzinfo=UTC), rng=random.Random(2), null_external_ratio=0
    )
    record["campaign_name"] = "Winter sale"
    record["timezone"] = "Europe/Paris"
    return record


def _message(mapping, event_type: str, overrides: dict) -> dict:
    spec = apply_overrides(mapping, check_overrides(overrides, "test")).spec(event_type)
    return MessageBuilder(spec).build(_record(event_type), "user-1")


def test_an_event_is_renamed_and_gets_constant_properties_and_context(mapping):
    message = _message(
        mapping,
        OPEN,
        {
            "users_messages_email_Open": {"event": "Email Opened (Braze)", "context": {"app.name": "News"}},
            "all": {"properties": {"source": "braze"}},
        },
    )
    assert message["event"] == "Email Opened (Braze)"
    assert message["properties"]["source"] == "braze"
    assert message["context"]["app"] == {"name": "News"}
    assert "integration" in message["context"]


def test_properties_are_dropped_renamed_or_limited_to_a_list(mapping):
    plain = MessageBuilder(mapping.spec(OPEN)).build(_record(OPEN), "user-1")
    assert {"campaign_name", "timezone"} <= set(plain["properties"])

    renamed = _message(
        mapping, OPEN, {"all": {"drop": ["timezone"], "rename": {"campaign_name": "campaign"}}}
    )
    assert "timezone" not in renamed["properties"] and "campaign_name" not in renamed["properties"]
    assert renamed["properties"]["campaign"] == "Winter sale"

    only = _message(mapping, OPEN, {OPEN: {"include": ["campaign_name", "dispatch_id"]}})
    assert (
        set(only["properties"]) <= {"campaign_name", "dispatch_id"} and "campaign_name" in only["properties"]
    )
    assert only["userId"] == "user-1" and only["messageId"] == plain["messageId"]


def test_overrides_of_one_type_leave_the_others_alone(mapping):
    assert _message(mapping, SEND, {OPEN: {"event": "Renamed"}})["event"] == mapping.spec(SEND).event


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"users.messages.email.Opne": {"event": "X"}}, "users.messages.email.Open"),
        ({OPEN: {"evnt": "X"}}, "unknown keys ['evnt']"),
        ({"all": {"event": "X"}}, "belongs to one event type"),
        ({OPEN: {"context": {"integration.name": "x"}}}, "reserved"),
        ({OPEN: {"drop": "timezone"}}, "must be a list"),
    ],
)
def test_a_bad_override_is_a_config_error_naming_the_current_and_key(tmp_path, overrides, words):
    entry = {"name": "web", "start_date": "2026-12-01T00:00:00Z", "source": {"bucket": "web-currents"}}
    with pytest.raises(ConfigError) as caught:
        parse_current({**entry, "mapping_overrides": overrides}, 0, tmp_path)
    assert "Current 'web'.mapping_overrides" in str(caught.value)
    assert words in str(caught.value)


def test_overrides_must_be_a_mapping():
    with pytest.raises(MappingError, match="a mapping of 'all' or event types"):
        check_overrides(["drop"], "here")
