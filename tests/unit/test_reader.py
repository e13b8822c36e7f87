from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from braze_currents.generator import avro_schema, encode_avro, generate_records
from braze_currents.reader import DecodeError, decode

HOUR = datetime(2026, 12, 1, 4, tzinfo=UTC)


@pytest.fixture(scope="module")
def records():
    return generate_records("users.messages.email.Open", 2500, hour=HOUR, rng=random.Random(1))


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy"])
def test_every_codec_decodes_across_many_blocks(records, codec):
    data = encode_avro(records, avro_schema("users.messages.email.Open"), codec=codec, block_size=300)
    decoded = decode(data, "k.avro")
    assert decoded.error is None
    assert decoded.codec == codec
    assert [r["id"] for r in decoded.records] == [r["id"] for r in records]


def test_an_older_schema_without_newer_fields_decodes_by_name():
    fields = [f for f in avro_schema("users.messages.email.Open")["fields"] if f["name"] != "app_group_id"]
    schema = {**avro_schema("users.messages.email.Open"), "fields": fields}
    rows = [{"id": "a", "user_id": "u" * 24, "external_user_id": None, "time": 1, "email_address": "x"}]
    decoded = decode(encode_avro(rows, schema), "old.avro")
    assert decoded.records[0]["id"] == "a" and "app_group_id" not in decoded.records[0]


def test_a_truncated_file_returns_the_records_before_the_cut(records):
    data = encode_avro(records, avro_schema("users.messages.email.Open"), block_size=500)
    decoded = decode(data[: len(data) // 2], "cut.avro")
    assert 0 < len(decoded.records) < len(records)
    assert "stopped after" in decoded.error


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty object"),
        (b"PK\x03\x04 not avro at all", "not an Avro"),
    ],
)
def test_undecodable_objects_raise_a_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(data, "bad.avro")


def test_a_schema_without_id_is_refused():
    schema = {"type": "record", "name": "x", "fields": [{"name": "time", "type": "int"}]}
    with pytest.raises(DecodeError, match="no id field"):
        decode(encode_avro([{"time": 1}], schema), "noid.avro")
