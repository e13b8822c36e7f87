from __future__ import annotations

import io
import json
import math
import random
import re
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import boto3
import fastavro
import pytest
from moto import mock_aws

from braze_currents import generator
from braze_currents.catalog import field_lists
from braze_currents.keys import parse_key

HOUR = datetime(2026, 12, 1, 4, tzinfo=UTC)
HOUR_START = int(HOUR.timestamp())
ALL_TYPES = sorted(field_lists())
WHATSAPP_LONG_TIME = {
    f"users.messages.whatsapp.{name}"
    for name in ("Abort", "Delivery", "Failure", "InboundReceive", "Read", "Send")
}
EMAIL_RE = re.compile(r"[^\s<>@]+@([A-Za-z0-9.-]+)")
FICTIONAL_PHONE_RE = re.compile(r"^(\+1\d{3}55501\d{2}|\+447700900\d{3})$")
HEX24_RE = re.compile(r"^[0-9a-f]{24}$")
EMAIL_TYPE = "users.messages.email.Send"


def _records(event_type: str, n: int, seed: int = 0, **kwargs) -> list[dict]:
    return generator.generate_records(event_type, n, hour=HOUR, rng=random.Random(seed), **kwargs)


def _decode(data: bytes) -> tuple[dict, list[dict], dict]:
    reader = fastavro.reader(io.BytesIO(data))
    records = list(reader)
    return reader.writer_schema, records, reader.metadata


def _window(**kwargs) -> tuple[dict[str, bytes], list[generator.GeneratedFile]]:
    written: dict[str, bytes] = {}
    arguments = {"prefix": "currents", "hour": HOUR, "event_types": [EMAIL_TYPE], "events_per_type": 50}
    arguments.update(kwargs)
    files = generator.write_window(written.__setitem__, **arguments)
    return written, files


@pytest.mark.parametrize("codec", generator.CODECS)
@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_every_type_round_trips_through_avro(event_type, codec):
    records = _records(event_type, 40, duplicate_ratio=0.05)
    data = generator.encode_avro(records, generator.avro_schema(event_type), codec=codec)

    writer_schema, decoded, metadata = _decode(data)

    assert decoded == records
    assert metadata["avro.codec"] == codec
    assert writer_schema["name"] == f"dataexport.S3.inner.{event_type}"
    assert [field["name"] for field in writer_schema["fields"]] == [
        field["name"] for field in field_lists()[event_type]
    ]
    assert all(list(record) == [field["name"] for field in field_lists()[event_type]] for record in decoded)


def test_avro_schema_gives_unions_a_null_default():
    schema = generator.avro_schema("users_campaigns_abort")

    assert schema["name"] == "dataexport.S3.inner.users.campaigns.Abort"
    external = next(field for field in schema["fields"] if field["name"] == "external_user_id")
    assert external == {"name": "external_user_id", "type": ["null", "string"], "default": None}
    user_id = next(field for field in schema["fields"] if field["name"] == "user_id")
    assert "default" not in user_id


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_time_falls_inside_the_hour_and_follows_the_schema_type(event_type):
    schema = generator.avro_schema(event_type)
    time_type = next(field["type"] for field in schema["fields"] if field["name"] == "time")
    records = _records(event_type, 300)

    assert time_type == ("long" if event_type in WHATSAPP_LONG_TIME else "int")
    assert all(HOUR_START <= record["time"] < HOUR_START + 3600 for record in records)
    assert all(type(record["time"]) is int for record in records)


def test_naive_and_mid_hour_datetimes_are_floored_to_the_utc_hour():
    records = generator.generate_records(
        EMAIL_TYPE, 200, hour=datetime(2026, 12, 1, 4, 37), rng=random.Random(0)
    )

    assert min(record["time"] for record in records) >= HOUR_START
    assert max(record["time"] for record in records) < HOUR_START + 3600


def test_about_ten_percent_of_external_ids_are_null():
    records = _records(EMAIL_TYPE, 5000, seed=3)
    external_ids = [record["external_user_id"] for record in records]

    null_share = external_ids.count(None) / len(external_ids)
    blank = [value for value in external_ids if value is not None and not value.strip()]
    numeric = [value for value in external_ids if value and value.isdigit()]
    assert 0.08 <= null_share <= 0.12
    assert 0 < len(blank) / len(external_ids) < 0.03
    assert numeric and all(value.startswith("0") for value in numeric)
    assert all(value is None or isinstance(value, str) for value in external_ids)


def test_null_external_ratio_is_honoured():
    records = _records(EMAIL_TYPE, 4000, seed=4, null_external_ratio=0.5)

    null_share = sum(record["external_user_id"] is None for record in records) / len(records)
    assert 0.45 <= null_share <= 0.55


def test_duplicates_are_full_copies_placed_after_the_original():
    records = _records(EMAIL_TYPE, 1000, seed=5, duplicate_ratio=0.05)
    first_seen: dict[str, int] = {}
    repeats = []
    for position, record in enumerate(records):
        if record["id"] in first_seen:
            repeats.append((first_seen[record["id"]], position))
        else:
            first_seen[record["id"]] = position

    assert len(records) == 1000
    assert len(repeats) == 50
    assert all(records[original] == records[copy] for original, copy in repeats)
    assert all(original < copy for original, copy in repeats)


def test_no_duplicates_when_ratio_is_zero():
    records = _records(EMAIL_TYPE, 2000, seed=6)

    assert len({record["id"] for record in records}) == 2000
    assert all(uuid.UUID(record["id"]).version == 4 for record in records)
    assert all(HEX24_RE.match(record["user_id"]) for record in records)


def test_some_duplicates_land_in_a_different_file_of_the_same_type():
    _, files = _window(
        event_types=[EMAIL_TYPE, "users.messages.sms.Send"], events_per_type=400, max_events_per_file=100
    )

    for event_type in (EMAIL_TYPE, "users.messages.sms.Send"):
        files_by_id: dict[str, set[str]] = defaultdict(set)
        for file in files:
            if file.event_type == event_type:
                for event_id in file.ids:
                    files_by_id[event_id].add(file.key)
        assert any(len(keys) > 1 for keys in files_by_id.values()), event_type


@pytest.mark.parametrize(("layout", "schema_label"), [("version-env", "version="), ("schema-zone", "")])
def test_keys_parse_back_to_type_partition_and_kafka_partition(layout, schema_label):
    types = ["users.messages.email.Open", "users.messages.whatsapp.Read", "users_canvas_abort"]
    written, files = _window(event_types=types, events_per_type=600, max_events_per_file=100, layout=layout)

    assert sorted(written) == sorted(file.key for file in files)
    offsets: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for file in files:
        parsed = parse_key(file.key)
        assert parsed.event_type == file.event_type
        assert parsed.partition == HOUR
        assert parsed.layout == layout
        assert f"/{schema_label}6/us-01/" in file.key
        assert parsed.kafka_partition in {0, 1, 2}
        offsets[file.event_type].append(parsed.offset)
        partitions[file.event_type].add(parsed.kafka_partition)
    assert set(offsets) == {"users.messages.email.Open", "users.messages.whatsapp.Read", "users.canvas.Abort"}
    assert all(values == sorted(values) and len(set(values)) == len(values) for values in offsets.values())
    assert all(found == {0, 1, 2} for found in partitions.values())


def test_generated_file_describes_the_bytes_written():
    written, files = _window(events_per_type=230, max_events_per_file=100)

    for file in files:
        _, decoded, _ = _decode(written[file.key])
        assert file.size == len(written[file.key])
        assert file.n_records == len(decoded)
        assert file.ids == [record["id"] for record in decoded]
        assert file.external_ids == [record["external_user_id"] for record in decoded]


def test_emails_only_use_reserved_example_domains():
    for event_type in ALL_TYPES:
        for record in _records(event_type, 150):
            for name, value in record.items():
                if isinstance(value, str) and "@" in value:
                    for domain in EMAIL_RE.findall(value):
                        assert domain in generator.EMAIL_DOMAINS, (event_type, name, value)
            if "email_address" in record:
                assert record["email_address"].rsplit("@", 1)[1] in generator.EMAIL_DOMAINS


def test_phone_numbers_only_use_fictional_ranges():
    seen = 0
    for event_type in ALL_TYPES:
        for record in _records(event_type, 150):
            for name, value in record.items():
                if "phone_number" in name and value is not None:
                    assert FICTIONAL_PHONE_RE.match(value), (event_type, name, value)
                    seen += 1
    assert seen > 1000


def test_names_carry_non_ascii_text():
    names = {
        value
        for record in _records(EMAIL_TYPE, 500)
        for key, value in record.items()
        if key.endswith("_name") and value
    }

    assert any(not value.isascii() for value in names)


def test_events_come_from_either_a_campaign_or_a_canvas():
    campaign_ids = {campaign.campaign_id for campaign in generator.campaign_pool()}
    canvas_ids = {canvas.canvas_id for canvas in generator.canvas_pool()}
    records = _records("users.messages.pushnotification.Send", 500)

    assert all((record["campaign_id"] is None) != (record["canvas_id"] is None) for record in records)
    assert {record["campaign_id"] for record in records} - {None} <= campaign_ids
    assert {record["canvas_id"] for record in records} - {None} <= canvas_ids
    assert 1 < len({record["campaign_id"] for record in records} - {None}) <= len(campaign_ids)


def test_message_extras_is_a_json_encoded_string():
    records = _records("users.messages.webhook.Send", 200)
    extras = [record["message_extras"] for record in records if record["message_extras"] is not None]

    assert extras
    assert all(isinstance(json.loads(value), dict) for value in extras)


def test_same_seed_writes_identical_files_and_another_seed_does_not():
    first, _ = _window(seed=7, codec="deflate", events_per_type=300)
    second, _ = _window(seed=7, codec="deflate", events_per_type=300)
    other, _ = _window(seed=8, codec="deflate", events_per_type=300)

    assert first == second
    assert first != other


def test_files_never_exceed_max_events_per_file():
    _, files = _window(events_per_type=1001, max_events_per_file=250)

    assert [file.n_records for file in files] == [201, 200, 200, 200, 200]
    assert len(files) == math.ceil(1001 / 250)
    assert sum(file.n_records for file in files) == 1001


def test_small_hours_still_get_one_to_three_files():
    counts = Counter()
    for seed in range(12):
        _, files = _window(seed=seed, events_per_type=30)
        counts[len(files)] += 1
        assert sum(file.n_records for file in files) == 30

    assert set(counts) <= {1, 2, 3}
    assert len(counts) > 1


def test_events_per_type_mapping_skips_types_without_events():
    _, files = _window(
        event_types=[EMAIL_TYPE, "users.messages.sms.Send", "users.behaviors.Uninstall"],
        events_per_type={EMAIL_TYPE: 20, "users.messages.sms.Send": 0},
    )

    assert {file.event_type for file in files} == {EMAIL_TYPE}
    assert sum(file.n_records for file in files) == 20


def test_several_thousand_records_make_a_multi_block_file():
    records = _records(EMAIL_TYPE, 3500)
    data = generator.encode_avro(records, generator.avro_schema(EMAIL_TYPE), codec="snappy")

    blocks = list(fastavro.block_reader(io.BytesIO(data)))

    assert [block.num_records for block in blocks] == [1000, 1000, 1000, 500]


def test_records_have_realistic_sizes():
    for event_type in ("users.messages.email.Open", "users.messages.sms.Delivery", "users.canvas.Entry"):
        records = _records(event_type, 1000)
        per_record = len(generator.encode_avro(records, generator.avro_schema(event_type))) / len(records)
        assert 200 <= per_record <= 850, (event_type, per_record)


def test_s3_put_uploads_every_file(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="currents-bucket")

        files = generator.write_window(
            generator.s3_put(client, "currents-bucket"),
            prefix="exports/currents",
            hour=HOUR,
            event_types=[EMAIL_TYPE],
            events_per_type=120,
            max_events_per_file=50,
        )

        listed = client.list_objects_v2(Bucket="currents-bucket", Prefix="exports/currents/")
        assert sorted(item["Key"] for item in listed["Contents"]) == sorted(file.key for file in files)
        body = client.get_object(Bucket="currents-bucket", Key=files[0].key)["Body"].read()
        assert len(body) == files[0].size


def test_dir_put_refuses_keys_outside_the_folder(tmp_path):
    put = generator.dir_put(tmp_path / "out")

    put("a/b.avro", b"x")
    with pytest.raises(ValueError, match="outside"):
        put("../escape.avro", b"x")
    assert (tmp_path / "out" / "a" / "b.avro").read_bytes() == b"x"


def test_cli_writes_hours_to_a_folder(tmp_path, capsys):
    exit_code = generator.main(
        [
            "--out",
            str(tmp_path),
            "--hour",
            "2026-12-01T04",
            "--hours",
            "2",
            "--events-per-type",
            "25",
            "--types",
            f"{EMAIL_TYPE},users_campaigns_abort",
            "--codec",
            "deflate",
        ]
    )

    lines = capsys.readouterr().out.strip().splitlines()
    assert exit_code == 0
    assert len(lines) == 2
    assert lines[0].startswith("2026-12-01-04: ") and "50 events" in lines[0]
    assert lines[1].startswith("2026-12-01-05: ")
    paths = sorted(tmp_path.rglob("*.avro"))
    partitions = {parse_key(path.relative_to(tmp_path).as_posix()).partition for path in paths}
    assert partitions == {HOUR, HOUR + timedelta(hours=1)}
    decoded = 0
    for path in paths:
        _, records, metadata = _decode(path.read_bytes())
        assert metadata["avro.codec"] == "deflate"
        decoded += len(records)
    assert decoded == 100
