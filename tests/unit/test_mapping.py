from __future__ import annotations

import json
import re
from pathlib import Path

import fastavro
import orjson
import pytest

from braze_currents import INTEGRATION_NAME
from braze_currents.catalog import all_event_types, canonical_event_type, field_lists
from braze_currents.mapping import (
    MappingError,
    build_message,
    compile_mapping,
    iso_timestamp,
    load_mapping,
    message_id,
)

ROOT = Path(__file__).resolve().parents[2]
MAPPING_FILE = ROOT / "include" / "segment_mapping.yaml"
REFERENCE = ROOT.parent / "shared" / "reference"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PHONE_FIELDS = {"to_phone_number", "user_phone_number", "phone_number"}


@pytest.fixture(scope="module")
def mapping():
    return load_mapping(MAPPING_FILE)


def test_the_catalog_has_the_51_exportable_types():
    assert len(all_event_types()) == 51


def test_mapping_file_covers_all_51_types_with_the_reference_names(mapping):
    reference = REFERENCE / "segment_event_map.json"
    if not reference.is_file():
        pytest.skip(f"{reference} is not available")
    names = {k: v["segment_event"] for k, v in json.loads(reference.read_text()).items() if k != "_about"}
    assert {t: mapping.spec(t).event for t in all_event_types()} == names


@pytest.mark.parametrize("alias", ["users_campaigns_abort", "users.campaigns.Abort", "USERS_CAMPAIGNS_ABORT"])
def test_both_spellings_of_campaign_abort_are_accepted(alias):
    assert canonical_event_type(alias) == "users.campaigns.Abort"


def _record_for(event_type: str) -> dict:
    record = {}
    for field in field_lists()[event_type]:
        kind = field["type"][1] if isinstance(field["type"], list) else field["type"]
        if isinstance(kind, dict):
            record[field["name"]] = ["a", "b"]
        elif kind in ("int", "long"):
            record[field["name"]] = 7
        elif kind == "boolean":
            record[field["name"]] = True
        elif kind == "float":
            record[field["name"]] = 1.5
        else:
            record[field["name"]] = f"{field['name']}-value"
    record.update(id="00123", external_user_id="  cust-1  ", time=1764561600)
    return record


@pytest.mark.parametrize("event_type", all_event_types())
def test_every_type_maps_to_a_valid_track_call(mapping, event_type):
    record = _record_for(event_type)
    message = build_message(record, mapping.spec(event_type), user_id="cust-1")
    assert message["type"] == "track"
    assert message["userId"] == "cust-1"
    assert message["messageId"] == "00123"
    assert message["timestamp"] == "2025-12-01T04:00:00.000Z"
    assert message["event"] == mapping.spec(event_type).event
    assert message["context"]["integration"]["name"] == INTEGRATION_NAME
    props = message["properties"]
    assert not {"id", "external_user_id", "time"} & set(props)
    assert "email_address" not in props and not PHONE_FIELDS & set(props)
    if "email_address" in record:
        assert message["context"]["traits"]["email"] == "email_address-value"
    phone = PHONE_FIELDS & set(record)
    if phone:
        assert message["context"]["traits"]["phone"].endswith("-value")
    for name, value in record.items():
        if (
            name
            not in {"id", "external_user_id", "time", "email_address", "device_model", "platform"}
            | PHONE_FIELDS
        ):
            assert props[name] == value  # ints stay ints, booleans booleans, arrays arrays
    orjson.dumps(message)


def test_every_sample_file_decodes_and_maps(mapping, samples_dir):
    mapped = 0
    for path in sorted(samples_dir.glob("*.avro")):
        event_type = path.name.removesuffix(".avro")
        with path.open("rb") as handle:
            records = list(fastavro.reader(handle))
        assert records, path.name
        if event_type not in field_lists():
            continue
        for record in records:
            if record.get("external_user_id"):
                message = build_message(record, mapping.spec(event_type), user_id=record["external_user_id"])
                assert message["messageId"] == record["id"]
                assert ISO_Z.match(message["timestamp"])
                assert b"NaN" not in orjson.dumps(message)
                mapped += 1
    assert mapped >= 45


def test_nulls_are_left_out_and_types_kept(mapping):
    record = {"id": "e1", "external_user_id": "u", "time": 1, "app_id": None, "is_amp": False, "n": 0}
    spec = mapping.spec("users.messages.email.Open")
    props = build_message(record, spec, user_id="u")["properties"]
    assert props == {"is_amp": False, "n": 0}


def test_time_ms_gives_millisecond_precision():
    assert iso_timestamp(1764561600, 1764561600123) == "2025-12-01T04:00:00.123Z"


def test_message_id_prefix_is_applied_and_kept_under_100_characters():
    assert message_id("abc", "braze-") == "braze-abc"
    with pytest.raises(ValueError, match="under 100"):
        message_id("x" * 90, "p" * 10)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"event_types": {"users.nope.Thing": {"event": "X"}}}, "not a Currents event type"),
        ({"event_types": {"users.messages.email.Open": {"event": ""}}}, "event must be"),
        ({"event_types": {"users.messages.email.Open": {"event": "X", "colour": 1}}}, "unknown keys"),
        ({"event_types": {"users.messages.email.Open": {"event": "X", "drop": "a"}}}, "list of field names"),
        ({"other": 1, "event_types": {}}, "unknown top-level"),
    ],
)
def test_bad_mapping_documents_name_the_problem(document, message):
    with pytest.raises(MappingError, match=message):
        compile_mapping(document, "test.yaml")


def test_rename_and_drop_apply():
    compiled = compile_mapping(
        {
            "defaults": {"drop": ["app_id"]},
            "event_types": {
                "users.messages.email.Open": {"event": "Opened", "rename": {"campaign_name": "campaign"}}
            },
        }
    )
    record = {"id": "e", "external_user_id": "u", "time": 0, "app_id": "a", "campaign_name": "c"}
    message = build_message(record, compiled.spec("users.messages.email.Open"), user_id="u")
    assert message["event"] == "Opened"
    assert message["properties"] == {"campaign": "c"}
