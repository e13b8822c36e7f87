"""The columnar builder writes, for a whole batch, the bytes the per-event builder and orjson write.

Each case decodes real Avro bytes with polars, serialises the rows to send both ways and compares the
buffers byte for byte; where the columnar builder cannot match exactly it must decline (None), and
prepare then stages the same bytes through the per-event loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

import braze_currents.columnar as columnar
from braze_currents.catalog import field_lists
from braze_currents.columnar import ColumnarBuilder, _context_tree
from braze_currents.filters import check_filters
from braze_currents.generator import avro_schema, encode_avro, generate_records
from braze_currents.keys import build_key
from braze_currents.mapping import (
    EventSpec,
    MessageBuilder,
    apply_overrides,
    check_overrides,
    integration_context,
    load_mapping,
)
from braze_currents.prepare import PrepareSettings, prepare_window
from braze_currents.reader import ListedObject
from braze_currents.storage import LocalStore
from tests.helpers import PREFIX, ROOT

HOUR = datetime(2026, 12, 1, 4, tzinfo=UTC)
MAPPING = load_mapping(ROOT / "include" / "segment_mapping.yaml")
TRICKY = [
    'q"uote',
    "back\\slash",
    "line\nbreak\t\r\x00\x1f\x7f",
    "\u2028\u2029",
    "é 漢字 😀",
    "</x>",
    " ",
    "",
]


def _frame(records: list[dict[str, Any]], event_type: str) -> pl.DataFrame:
    return pl.read_avro(io.BytesIO(encode_avro(records, avro_schema(event_type))))


def _per_event(spec: EventSpec, records: list[dict[str, Any]], rows: list[int], prefix: str = "") -> bytes:
    builder = MessageBuilder(spec, message_id_prefix=prefix, integration=integration_context())
    out = bytearray()
    for row in rows:
        record = records[row]
        user = record["external_user_id"]
        if user:
            message = builder.build(record, user)
        else:
            message = builder.build(record, None, anonymous_id=str(record["user_id"]).strip())
        out += orjson.dumps(message) + b","
    return bytes(out)


def _at_once(
    spec: EventSpec, frame: pl.DataFrame, rows: list[int], prefix: str = ""
) -> tuple[bytes, Any] | None:
    records = frame.to_dicts()
    identities = [records[row]["external_user_id"] or str(records[row]["user_id"]).strip() for row in rows]
    anonymous = [not records[row]["external_user_id"] for row in rows]
    builder = ColumnarBuilder(spec, message_id_prefix=prefix, integration=integration_context())
    return builder.serialise(frame, rows, identities, anonymous)


def _hostile(records: list[dict[str, Any]], rng: random.Random) -> None:
    """Put awkward but valid values into string fields, including the context fields moved out."""
    for record in records:
        for name, value in record.items():
            if isinstance(value, str) and name not in ("id", "external_user_id") and rng.random() < 0.15:
                record[name] = rng.choice(TRICKY) + value[: rng.randrange(0, 5)]


@pytest.mark.parametrize("event_type", sorted(field_lists()))
def test_every_event_type_serialises_to_the_per_event_bytes(event_type):
    rng = random.Random(event_type)
    records = generate_records(event_type, 300, hour=HOUR, rng=rng, null_external_ratio=0.3)
    _hostile(records, rng)
    frame = _frame(records, event_type)
    decoded = frame.to_dicts()
    rows = [row for row, record in enumerate(decoded) if record["external_user_id"] or record.get("user_id")]
    spec = MAPPING.spec(event_type)

    got = _at_once(spec, frame, rows)

    assert got is not None, "the shipped mapping is one the columnar builder takes"
    blob, lengths = got
    assert blob == _per_event(spec, decoded, rows)
    assert lengths.sum() + len(lengths) == len(blob)


def test_times_across_the_whole_range_and_milliseconds_match():
    event_type = "users.messages.email.Open"
    records = generate_records(event_type, 8, hour=HOUR, rng=random.Random(1))
    seconds = (-(2**31), -1, 0, 951_782_400, 2**31 - 1, 1_796_099_761, 86_399, -86_401)  # an Avro int
    for record, second in zip(records, seconds, strict=True):
        record["time"] = second
    fields = [
        *avro_schema(event_type)["fields"],
        {"name": "time_ms", "type": ["null", "long"], "default": None},
    ]
    schema = {**avro_schema(event_type), "fields": fields}
    for index, record in enumerate(records):
        record["time_ms"] = (None, 1_796_099_761_123, -7, 0, 999, -1000, None, 253_402_300_799_999)[index]
        record["external_user_id"] = "someone"
    frame = pl.read_avro(io.BytesIO(encode_avro(records, schema)))
    spec = MAPPING.spec(event_type)
    rows = list(range(8))

    got = _at_once(spec, frame, rows)

    assert got is not None
    assert got[0] == _per_event(spec, frame.to_dicts(), rows)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"time": 253_402_300_800}, "after the year 9999"),
        ({"time": -30_610_224_001}, "before the year 1000"),
        ({"id": "x" * 100}, "a messageId of 100 characters"),
        ({"campaign_name": "a" * 40_000}, "over 32 KB"),
    ],
)
def test_a_batch_with_an_event_that_needs_a_dead_letter_is_declined(change, why):
    event_type = "users.messages.whatsapp.Send"  # its time is an Avro long
    records = generate_records(event_type, 20, hour=HOUR, rng=random.Random(2), null_external_ratio=0)
    records[7].update(change)
    frame = _frame(records, event_type)
    assert _at_once(MAPPING.spec(event_type), frame, list(range(20))) is None, why
    assert _at_once(MAPPING.spec(event_type), frame, [*range(7), *range(8, 20)]) is not None


def test_overrides_rename_drop_include_and_constant_properties_match():
    overrides = check_overrides(
        {
            "all": {"drop": ["timezone"], "properties": {"source": "braze", "n": 3}},
            "users.messages.email.Click": {"rename": {"url": "link", "campaign_name": "campaign"}},
            "users.messages.email.Open": {"include": ["campaign_id", "user_agent"], "event": "Opened!"},
        },
        "test",
    )
    mapping = apply_overrides(MAPPING, overrides)
    for event_type in ("users.messages.email.Click", "users.messages.email.Open"):
        records = generate_records(event_type, 200, hour=HOUR, rng=random.Random(3), null_external_ratio=0)
        frame = _frame(records, event_type)
        rows = list(range(0, 200, 3))
        got = _at_once(mapping.spec(event_type), frame, rows, prefix="braze-")
        assert got is not None
        assert got[0] == _per_event(mapping.spec(event_type), frame.to_dicts(), rows, prefix="braze-")


@pytest.mark.parametrize(
    "spec",
    [
        EventSpec(event="E", context_constants=((("app", "name"), "x"),)),
        EventSpec(event="E", constants={"campaign_id": "clash"}),
        EventSpec(event="E", rename={"campaign_id": "campaign_name"}),
        EventSpec(
            event="E", context=(("a", ("traits", "x")), ("b", ("device", "y")), ("c", ("traits", "z")))
        ),
        EventSpec(event="E", context=(("a", ("traits",)), ("b", ("traits", "y")))),
    ],
    ids=[
        "context constants",
        "constant named like a field",
        "two fields renamed alike",
        "interleaved",
        "clash",
    ],
)
def test_mappings_the_columnar_builder_cannot_match_are_declined(spec):
    records = generate_records("users.messages.email.Open", 10, hour=HOUR, rng=random.Random(4))
    frame = _frame(records, "users.messages.email.Open")
    assert _at_once(spec, frame, [0, 1]) is None


def test_side_by_side_context_paths_give_a_fixed_order():
    spec = EventSpec(
        event="E", context=(("a", ("traits", "x")), ("c", ("traits", "z")), ("b", ("device", "y")))
    )
    assert _context_tree(spec) == {"traits": {"x": "a", "z": "c"}, "device": {"y": "b"}}


def test_a_column_of_another_type_is_declined():
    event_type = "users.messages.email.Open"
    fields = [
        *avro_schema(event_type)["fields"],
        {"name": "score", "type": ["null", "double"], "default": None},
    ]
    schema = {**avro_schema(event_type), "fields": fields}
    records = generate_records(event_type, 5, hour=HOUR, rng=random.Random(5), null_external_ratio=0)
    for record in records:
        record["score"] = float("nan")
    frame = pl.read_avro(io.BytesIO(encode_avro(records, schema)))
    assert _at_once(MAPPING.spec(event_type), frame, [0, 1]) is None


def _hostile_window() -> tuple[list[ListedObject], dict[str, bytes], str]:
    rng = random.Random(6)
    objects, data, sent = [], {}, ""
    for offset, event_type in enumerate(["users.messages.email.Open", "users.messages.sms.Delivery"] * 2):
        records = generate_records(event_type, 2600, hour=HOUR, rng=rng, null_external_ratio=0.2)
        _hostile(records, rng)
        records[5].update(campaign_name="x" * 40_000, external_user_id="someone")  # a dead letter: its batch
        records[2100].update(campaign_id="denied", external_user_id="someone")  # goes event by event
        sent = sent or records[40]["id"]
        key = build_key(
            prefix=PREFIX, integration_id="c" * 24, event_type=event_type, hour=HOUR, offset=offset
        )
        data[key] = encode_avro(records, avro_schema(event_type), block_size=300)
        objects.append(ListedObject(key, len(data[key]), f"e{offset}", event_type))
    return objects, data, sent


def _prepared_both_ways(
    objects: list[ListedObject],
    data: dict[str, bytes],
    mapping: Any,
    settings: PrepareSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    seen_ids: set[str] | None = None,
) -> tuple[Any, Any]:
    """Prepare the window as it is, then with the columnar builder off; both stage the same bytes."""

    def run(folder: str) -> Any:
        return prepare_window(
            objects,
            data.__getitem__,
            mapping=mapping,
            settings=settings,
            staging=LocalStore(tmp_path / folder),
            folder="w",
            seen_ids=seen_ids,
        )

    at_once = run("at-once")
    monkeypatch.setattr(columnar.ColumnarBuilder, "serialise", lambda self, *args: None)
    per_event = run("per-event")
    assert _staged_digest(tmp_path / "at-once") == _staged_digest(tmp_path / "per-event")
    return at_once, per_event


def _staged_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("anonymous", [False, True])
def test_prepare_stages_the_same_bytes_with_the_columnar_builder_as_without(anonymous, tmp_path, monkeypatch):
    objects, data, sent = _hostile_window()
    settings = PrepareSettings(
        event_types=frozenset({"users.messages.email.Open", "users.messages.sms.Delivery"}),
        message_id_prefix="p-",
        chunk_events=3000,
        filters=check_filters({"campaign_ids": {"deny": ["denied"]}}, "filters"),
        anonymous=anonymous,
    )
    calls = []
    serialise = ColumnarBuilder.serialise

    def counted(self: ColumnarBuilder, *args: Any) -> Any:
        result = serialise(self, *args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(columnar.ColumnarBuilder, "serialise", counted)
    at_once, per_event = _prepared_both_ways(
        objects, data, MAPPING, settings, tmp_path, monkeypatch, seen_ids={"p-" + sent}
    )

    as_data = [dataclasses.asdict(result) for result in (at_once, per_event)]
    for data_ in as_data:
        for letter in data_["dead_letters"]:
            letter.pop("at")
    assert as_data[0] == as_data[1]
    assert any(calls) and not all(calls), "most batches go at once, those with a dead letter do not"
    assert at_once.dead_lettered == 4 and at_once.dropped["filter_campaign_id"] == 4
    assert at_once.dropped["already_sent"] == 1


def test_fields_named_like_the_builders_own_columns_keep_their_values():
    event_type = "users.messages.email.Open"
    extra = [
        {"name": name, "type": ["null", "string"], "default": None} for name in ("__identity", "__anonymous")
    ]
    schema = {**avro_schema(event_type), "fields": [*avro_schema(event_type)["fields"], *extra]}
    records = generate_records(event_type, 6, hour=HOUR, rng=random.Random(7), null_external_ratio=0)
    for record in records:
        record.update(__identity="own value", __anonymous="x")
    frame = pl.read_avro(io.BytesIO(encode_avro(records, schema)))
    got = _at_once(MAPPING.spec(event_type), frame, list(range(6)))
    assert got is not None and got[0] == _per_event(
        MAPPING.spec(event_type), frame.to_dicts(), list(range(6))
    )
    assert got[0].count(b'"__identity":"own value"') == 6


@pytest.mark.parametrize(
    ("overrides", "prefix"),
    [
        ({"all": {"properties": {"big": 2**64}}}, ""),  # orjson cannot write it
        ({"all": {"properties": {"deep": {1: "non-string key"}}}}, ""),
        ({"users.messages.email.Open": {"event": "Opened \ud800"}}, ""),  # a lone surrogate
        ({"all": {"rename": {"campaign_id": "camp\udfff"}}}, ""),
        ({}, "p\ud800-"),
    ],
    ids=[
        "int over 64 bits",
        "non-string key",
        "surrogate in event",
        "surrogate in rename",
        "surrogate prefix",
    ],
)
def test_a_mapping_orjson_cannot_write_is_declined_and_dead_letters_alike(
    overrides, prefix, tmp_path, monkeypatch
):
    event_type = "users.messages.email.Open"
    mapping = apply_overrides(MAPPING, check_overrides(overrides, "test")) if overrides else MAPPING
    records = generate_records(event_type, 30, hour=HOUR, rng=random.Random(8), null_external_ratio=0)
    frame = _frame(records, event_type)
    assert _at_once(mapping.spec(event_type), frame, list(range(30)), prefix=prefix) is None

    key = build_key(prefix=PREFIX, integration_id="d" * 24, event_type=event_type, hour=HOUR, offset=1)
    data = {key: encode_avro(records, avro_schema(event_type))}
    settings = PrepareSettings(event_types=frozenset({event_type}), message_id_prefix=prefix)
    listed = [ListedObject(key, len(data[key]), "e", event_type)]

    result, per_event = _prepared_both_ways(listed, data, mapping, settings, tmp_path, monkeypatch)

    assert result.dead_lettered == per_event.dead_lettered > 0
    assert result.dead_lettered + result.staged_events == 30
    assert {letter.reason for letter in result.dead_letters} == {"unmappable_event"}


def test_a_file_that_only_repeats_an_earlier_file_stages_nothing_more(tmp_path):
    event_type = "users.messages.email.Open"
    records = generate_records(event_type, 50, hour=HOUR, rng=random.Random(9), null_external_ratio=0)
    data, listed = {}, []
    for offset in (1, 2):
        key = build_key(
            prefix=PREFIX, integration_id="e" * 24, event_type=event_type, hour=HOUR, offset=offset
        )
        data[key] = encode_avro(records, avro_schema(event_type))
        listed.append(ListedObject(key, len(data[key]), f"e{offset}", event_type))
    result = prepare_window(
        listed,
        data.__getitem__,
        mapping=MAPPING,
        settings=PrepareSettings(event_types=frozenset({event_type})),
        staging=LocalStore(tmp_path),
        folder="w",
    )
    assert result.staged_events == result.dropped["duplicate_id"] > 40
    assert [source["staged"] for source in result.source_files] == [result.staged_events, 0]
