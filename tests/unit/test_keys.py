from __future__ import annotations

from datetime import UTC, datetime

import pytest

from braze_currents.keys import KeyLayoutError, build_key, parse_key

INTEGRATION = "69cadaaed2d51b7c75b1a3e5"
DOC_KEY = (
    f"currents-export/dataexport.prod-01.S3.integration.{INTEGRATION}/"
    "event_type=users.messages.pushnotification.Send/date=2025-04-01-17/version=6/us-01/"
    f"dataexport.prod-01.S3.integration.{INTEGRATION}+0+123456.avro"
)
OLD_KEY = (
    f"currents/dataexport.S3.integration.{INTEGRATION}/event_type=users.messages.email.Open/"
    f"date=2021-03-02-00/299/us-03/dataexport.S3.integration.{INTEGRATION}+2+0000035465.avro"
)


def test_parses_the_documented_version_env_layout():
    parsed = parse_key(DOC_KEY)
    assert parsed.event_type == "users.messages.pushnotification.Send"
    assert parsed.partition == datetime(2025, 4, 1, 17, tzinfo=UTC)
    assert (parsed.layout, parsed.schema, parsed.zone) == ("version-env", 6, "us-01")
    assert (parsed.kafka_partition, parsed.offset) == (0, 123456)


def test_parses_the_older_schema_zone_layout_with_padded_offset():
    parsed = parse_key(OLD_KEY)
    assert (parsed.layout, parsed.schema, parsed.zone) == ("schema-zone", 299, "us-03")
    assert (parsed.kafka_partition, parsed.offset) == (2, 35465)


def test_unknown_levels_still_parse_but_say_so():
    key = DOC_KEY.replace("version=6/us-01/", "v7/extra/level/")
    parsed = parse_key(key)
    assert parsed.layout == "unknown"
    assert parsed.event_type == "users.messages.pushnotification.Send"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("currents/foo/bar.avro", "event_type="),
        (DOC_KEY.replace("date=2025-04-01-17", "date=2025-04-01"), "YYYY-MM-DD-HH"),
        (DOC_KEY.replace(".avro", ".json"), "not an .avro"),
        (DOC_KEY.replace("event_type=users.messages.pushnotification.Send", "event_type="), "empty"),
    ],
)
def test_bad_keys_raise_an_error_naming_the_key(key, message):
    with pytest.raises(KeyLayoutError, match=message) as info:
        parse_key(key)
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("layout", ["version-env", "schema-zone"])
@pytest.mark.parametrize("padded", [False, True])
def test_built_keys_parse_back(layout, padded):
    hour = datetime(2026, 12, 1, 4, tzinfo=UTC)
    key = build_key(
        prefix="currents",
        integration_id=INTEGRATION,
        event_type="users.messages.email.Send",
        hour=hour,
        offset=42,
        layout=layout,
        padded_offset=padded,
    )
    parsed = parse_key(key)
    assert (parsed.event_type, parsed.partition, parsed.layout, parsed.offset) == (
        "users.messages.email.Send",
        hour,
        layout,
        42,
    )
