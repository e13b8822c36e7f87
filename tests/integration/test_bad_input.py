"""The bad-input matrix: one window through the DAG holding every kind of hostile object at once.

Each test checks one case's outcome: a dead letter or a counted, named problem, while the rest of the
window is still delivered. The window runs once for the module (``dag.test`` against the moto server
and the local receiver).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from braze_currents.generator import avro_schema, encode_avro, generate_records, s3_put, write_window
from braze_currents.keys import build_key
from braze_currents.localstack import LocalServices
from tests.helpers import PREFIX, TYPES, decode_prefix, expected_ids, write_config

HOUR = datetime(2026, 11, 30, 9, tzinfo=UTC)
WHATSAPP = "users.messages.whatsapp.Send"  # `time` is a long here, so it can hold absurd values
UNKNOWN_TYPE = "users.messages.hologram.Beam"


def _key(event_type: str, letter: str, offset: int) -> str:
    return build_key(
        prefix=PREFIX, integration_id=letter * 24, event_type=event_type, hour=HOUR, offset=offset
    )


def _without(event_type: str, field: str, count: int, rng: random.Random) -> bytes:
    schema = avro_schema(event_type)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != field]
    records = generate_records(event_type, count, hour=HOUR, rng=rng)
    for record in records:
        record.pop(field, None)
    return encode_avro(records, schema)


class Hostile:
    """Writes the hostile window and records, per case, what the pipeline must do."""

    def __init__(self, services: LocalServices) -> None:
        self.put = s3_put(services.s3_client(), services.bucket)
        self.seen: set[str] = set()
        self.expected: set[str] = set()
        self.read = 0
        self.keys: dict[str, str] = {}
        self.ids: dict[str, set[str]] = {}
        self.records: dict[str, int] = {}

    def add(self, case: str, key: str, data: bytes, *, decodes: bool = True) -> list[dict]:
        self.put(key, data)
        self.keys[case] = key
        records = decode_prefix(data) if decodes else []
        self.read += len(records)
        self.records[case] = len(records)
        self.ids[case] = expected_ids(records, self.seen)
        self.expected |= self.ids[case]
        return records

    def write(self) -> None:
        rng = random.Random(11)
        base: dict[str, bytes] = {}

        def keep(key: str, data: bytes) -> None:
            base[key] = data

        write_window(keep, prefix=PREFIX, hour=HOUR, event_types=TYPES[:2], events_per_type=500)
        for index, (key, data) in enumerate(sorted(base.items())):
            self.add(f"base-{index}", key, data)

        many = generate_records(TYPES[4], 3000, hour=HOUR, rng=rng, null_external_ratio=0)
        whole = encode_avro(many, avro_schema(TYPES[4]), block_size=500)
        self.add("truncated", _key(TYPES[4], "b", 1), whole[: len(whole) * 2 // 3])
        self.add("zero_bytes", _key(TYPES[0], "c", 2), b"", decodes=False)
        self.add("not_avro", _key(TYPES[0], "c", 3), b"<html>this is not avro</html>\n" * 20, decodes=False)
        self.add("no_id", _key(TYPES[1], "c", 4), _without(TYPES[1], "id", 20, rng), decodes=False)
        self.add("no_time", _key(TYPES[1], "c", 5), _without(TYPES[1], "time", 20, rng), decodes=False)

        times = generate_records(WHATSAPP, 4, hour=HOUR, rng=rng, null_external_ratio=0)
        times[0]["time"], times[1]["time"] = 0, 4_102_444_800  # 1970 and 2100: odd but valid
        times[2]["time"], times[3]["time"] = 10**13, -(10**12)  # beyond year 9999 and before year 1000
        self.far_times = {"ok": {times[0]["id"], times[1]["id"]}, "bad": {times[2]["id"], times[3]["id"]}}
        self.add("far_times", _key(WHATSAPP, "d", 6), encode_avro(times, avro_schema(WHATSAPP)))
        self.ids["far_times"] -= self.far_times["bad"]
        self.expected -= self.far_times["bad"]

        utf = generate_records(TYPES[2], 1000, hour=HOUR, rng=rng, null_external_ratio=0)
        field = next(name for name in ("dispatch_id", "campaign_name") if isinstance(utf[600].get(name), str))
        utf[600][field] = "\u00a7" * 4  # 8 bytes in UTF-8, swapped below for 8 bytes that are not UTF-8
        data = encode_avro(utf, avro_schema(TYPES[2]), block_size=100)
        assert data.count("\u00a7\u00a7\u00a7\u00a7".encode()) == 1
        self.add("invalid_utf8", _key(TYPES[2], "e", 7), data.replace(("\u00a7" * 4).encode(), b"\xff" * 8))

        stray = generate_records(TYPES[0], 10, hour=HOUR, rng=rng)
        self.add(
            "unknown_type",
            _key(UNKNOWN_TYPE, "f", 8),
            encode_avro(stray, avro_schema(TYPES[0])),
            decodes=False,
        )

        # 100,000 events: 2,000 generated ones, repeated under fresh ids (generating each costs minutes).
        pattern = generate_records(TYPES[3], 2000, hour=HOUR, rng=rng, null_external_ratio=0.1)
        huge = [{**record, "id": f"{n:08d}-{record['id'][9:]}"} for n, record in enumerate(pattern * 50)]
        self.add("100k_events", _key(TYPES[3], "g", 9), encode_avro(huge, avro_schema(TYPES[3])))

        odd = generate_records(TYPES[0], 50, hour=HOUR, rng=rng, null_external_ratio=0)
        odd_key = _key(TYPES[0], "h", 10).rsplit("/", 3)[0] + "/some/new/levels/0_10.avro"
        self.add("unknown_layout", odd_key, encode_avro(odd, avro_schema(TYPES[0])))

        first = generate_records(TYPES[1], 200, hour=HOUR, rng=rng, null_external_ratio=0)
        again = [dict(record) for record in first[:80]] + generate_records(
            TYPES[1], 40, hour=HOUR, rng=rng, null_external_ratio=0
        )
        self.add("dup_first", _key(TYPES[1], "i", 11), encode_avro(first, avro_schema(TYPES[1])))
        self.add("dup_second", _key(TYPES[1], "i", 12), encode_avro(again, avro_schema(TYPES[1])))
        self.repeated = {record["id"] for record in first[:80]}


@pytest.fixture(scope="module")
def outcome(airflow_db, tmp_path_factory):
    workdir: Path = tmp_path_factory.mktemp("bad-input")
    with LocalServices(workdir / "services") as services, pytest.MonkeyPatch.context() as patch:
        for name, value in services.connection_env().items():
            patch.setenv(name, value)
        hostile = Hostile(services)
        hostile.write()
        config = write_config(
            workdir / "exports.yaml",
            bucket=services.bucket,
            workdir=workdir,
            event_types=[*TYPES, WHATSAPP],
            on_dead_letters="warn",
            chunk_events=50_000,
        )
        patch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
        from braze_currents.config import load_config
        from braze_currents_airflow.dag_factory import build_dag

        (current,) = load_config(config)
        state = build_dag(current).test(logical_date=HOUR).state
        window = workdir / "dead_letters" / "test" / "date=2026-11-30-09"
        report = json.loads((window / "report.json").read_text())
        letters = [json.loads(line) for line in (window / "dead_letters.ndjson").read_text().splitlines()]
        yield {
            "state": state,
            "hostile": hostile,
            "report": report,
            "letters": letters,
            "accepted": services.receiver.accepted_ids(),
            "stats": services.receiver.stats(),
            "files": {entry["key"]: entry for entry in report["files"]},
        }


def _letters(outcome, case: str) -> list[dict]:
    key = outcome["hostile"].keys[case]
    return [letter for letter in outcome["letters"] if letter["key"] == key]


def test_the_window_still_succeeds_balances_and_delivers_everything_deliverable(outcome):
    assert outcome["state"] == "success"
    assert outcome["report"]["balanced"] is True
    assert outcome["accepted"] == outcome["hostile"].expected
    assert outcome["stats"]["duplicates"] == 0
    assert not outcome["stats"]["rejected"]


def test_a_truncated_file_delivers_the_records_before_the_cut_and_is_a_dead_letter(outcome):
    (letter,) = _letters(outcome, "truncated")
    assert letter["reason"] == "truncated_file" and letter["id"] is None
    assert outcome["hostile"].ids["truncated"] <= outcome["accepted"]
    assert outcome["files"][letter["key"]]["read"] == outcome["hostile"].records["truncated"]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("zero_bytes", "empty object (0 bytes)"),
        ("not_avro", "not an Avro object container file"),
        ("no_id", "writer schema has no id field"),
        ("no_time", "writer schema has no time field"),
    ],
)
def test_undecodable_objects_are_dead_lettered_by_key_with_the_reason(outcome, case, words):
    (letter,) = _letters(outcome, case)
    assert letter["reason"] == "undecodable_file"
    assert words in letter["detail"]
    assert outcome["files"][letter["key"]]["read"] == 0


def test_times_far_in_the_past_or_future_are_sent_when_iso_8601_can_carry_them(outcome):
    far = outcome["hostile"].far_times
    assert far["ok"] <= outcome["accepted"]
    assert not far["bad"] & outcome["accepted"]
    letters = {letter["id"]: letter for letter in _letters(outcome, "far_times")}
    assert set(letters) == far["bad"]
    assert all(letter["reason"] == "unmappable_event" for letter in letters.values())
    assert all("outside the years" in letter["detail"] for letter in letters.values())


def test_invalid_utf8_stops_that_file_with_a_dead_letter_naming_it(outcome):
    (letter,) = _letters(outcome, "invalid_utf8")
    assert letter["reason"] == "truncated_file"
    assert "UnicodeDecodeError" in letter["detail"]
    read = outcome["files"][letter["key"]]["read"]
    assert 0 < read <= 600  # the records before the bad block were read and sent


def test_an_unknown_event_type_folder_is_reported_not_read(outcome):
    assert outcome["report"]["counts"]["unknown_event_types"] == {UNKNOWN_TYPE: 1}
    assert outcome["hostile"].keys["unknown_type"] not in outcome["files"]


def test_a_100k_event_file_is_delivered_in_full(outcome):
    entry = outcome["files"][outcome["hostile"].keys["100k_events"]]
    assert entry["read"] == 100_000
    assert outcome["hostile"].ids["100k_events"] <= outcome["accepted"]
    assert entry["sent"] == len(outcome["hostile"].ids["100k_events"])


def test_a_key_layout_the_parser_does_not_know_is_read_and_counted(outcome):
    assert outcome["hostile"].keys["unknown_layout"] in outcome["files"]
    assert outcome["hostile"].ids["unknown_layout"] <= outcome["accepted"]


def test_ids_repeated_across_two_files_are_sent_once(outcome):
    second = outcome["files"][outcome["hostile"].keys["dup_second"]]
    assert second["dropped"].get("duplicate_id") == len(outcome["hostile"].repeated)
    assert outcome["hostile"].repeated <= outcome["accepted"]
    assert outcome["stats"]["duplicates"] == 0


def test_the_same_file_listed_twice_is_read_once(tmp_path):
    from braze_currents.mapping import load_mapping
    from braze_currents.prepare import PrepareSettings, prepare_window
    from braze_currents.reader import ListedObject
    from braze_currents.storage import LocalStore
    from tests.helpers import ROOT

    records = generate_records(TYPES[0], 300, hour=HOUR, rng=random.Random(3), null_external_ratio=0)
    data = encode_avro(records, avro_schema(TYPES[0]))
    listed = ListedObject(_key(TYPES[0], "j", 1), len(data), "etag", TYPES[0])

    result = prepare_window(
        [listed, listed],
        lambda key: data,
        mapping=load_mapping(ROOT / "include" / "segment_mapping.yaml"),
        settings=PrepareSettings(event_types=frozenset(TYPES)),
        staging=LocalStore(tmp_path),
        folder="w",
    )

    assert result.files_listed_twice == 1
    assert result.events_read == 300
    assert result.staged_events == len(expected_ids(records, set()))
    assert [source["key"] for source in result.source_files] == [listed.key]
