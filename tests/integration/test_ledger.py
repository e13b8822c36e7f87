"""The ledger through the DAG: late files, windows still to run, dead letters sent again."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from braze_currents.generator import avro_schema, encode_avro, generate_records, s3_put, write_window
from braze_currents.keys import build_key, partition_name
from braze_currents.localstack import LocalServices
from tests.helpers import PREFIX, TYPES, decode_prefix, expected_ids, write_config

HOUR = datetime(2026, 11, 30, 7, tzinfo=UTC)


@pytest.fixture
def env(airflow_db, tmp_path, monkeypatch):
    with LocalServices(tmp_path / "services") as services:
        for name, value in services.connection_env().items():
            monkeypatch.setenv(name, value)
        config = write_config(
            tmp_path / "exports.yaml", bucket=services.bucket, workdir=tmp_path, upload_concurrency=2
        )
        monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
        from braze_currents.config import load_config
        from braze_currents_airflow.dag_factory import build_dag

        (current,) = load_config(config)
        yield services, build_dag(current), tmp_path


class Window:
    """Writes files into the moto bucket and remembers which ids Segment must end up with."""

    def __init__(self, services) -> None:
        self.client = services.s3_client()
        self.put = s3_put(self.client, services.bucket)
        self.seen: set[str] = set()
        self.expected: set[str] = set()

    def hour(self, hour: datetime, events_per_type: int = 300) -> list[str]:
        written: dict[str, bytes] = {}

        def keep(key: str, data: bytes) -> None:
            written[key] = data
            self.put(key, data)

        write_window(keep, prefix=PREFIX, hour=hour, event_types=TYPES[:3], events_per_type=events_per_type)
        for data in written.values():
            self.expected |= expected_ids(decode_prefix(data), self.seen)
        return list(written)

    def late_file(self, hour: datetime, offset: int, seed: int) -> tuple[str, set[str]]:
        records = generate_records(TYPES[0], 200, hour=hour, rng=random.Random(seed), null_external_ratio=0)
        key = build_key(prefix=PREFIX, integration_id="c" * 24, event_type=TYPES[0], hour=hour, offset=offset)
        self.put(key, encode_avro(records, avro_schema(TYPES[0])))
        ids = expected_ids(records, self.seen)
        self.expected |= ids
        return key, ids


def _read(workdir, store: str, hour: datetime, name: str):
    path = workdir / store / "test" / f"date={partition_name(hour)}" / name
    return json.loads(path.read_text()) if name.endswith(".json") else path.read_text()


def test_a_late_file_is_sent_once_by_a_later_run_and_reported_as_late(env):
    services, dag, workdir = env
    window = Window(services)
    window.hour(HOUR)
    assert dag.test(logical_date=HOUR).state == "success"
    late_key, late_ids = window.late_file(HOUR, offset=77, seed=1)
    assert not late_ids & services.receiver.accepted_ids()

    assert dag.test(logical_date=HOUR + timedelta(hours=1)).state == "success"

    assert late_ids <= services.receiver.accepted_ids()
    report = _read(workdir, "dead_letters", HOUR + timedelta(hours=1), "report.json")
    assert [entry["key"] for entry in report["late_files"]] == [late_key]
    assert report["counts"]["late_files"] == 1
    assert report["late_files"][0]["late_from"] == partition_name(HOUR)
    origin = {entry["key"]: entry for entry in _read(workdir, "state", HOUR, "files.json")}
    assert origin[late_key]["late_in"] == (HOUR + timedelta(hours=1)).isoformat()
    assert origin[late_key]["sent"] == len(late_ids)

    requests = services.receiver.stats()["requests"]
    assert dag.test(logical_date=HOUR).state == "success"  # a rerun of the late file's own hour
    assert dag.test(logical_date=HOUR + timedelta(hours=2)).state == "success"  # still in lookback
    assert services.receiver.stats()["requests"] == requests
    assert services.receiver.accepted_ids() == window.expected
    assert services.receiver.stats()["duplicates"] == 0


def test_files_of_an_hour_that_has_not_run_yet_are_left_to_its_own_run(env):
    services, dag, workdir = env
    window = Window(services)
    earlier = window.hour(HOUR)
    window.hour(HOUR + timedelta(hours=1))

    assert dag.test(logical_date=HOUR + timedelta(hours=1)).state == "success"
    report = _read(workdir, "dead_letters", HOUR + timedelta(hours=1), "report.json")
    assert report["late_files"] == []
    assert not {entry["key"] for entry in report["files"]} & set(earlier)

    assert dag.test(logical_date=HOUR).state == "success"
    assert services.receiver.accepted_ids() == window.expected
    assert services.receiver.stats()["duplicates"] == 0


def test_dead_letters_are_sent_again_once_the_cause_is_fixed(env):
    services, dag, workdir = env
    window = Window(services)
    window.hour(HOUR)
    refused = set(sorted(window.expected)[:2])
    services.receiver.refuse_message_ids(refused)

    # Default policy: a window with dead letters fails, so the loss is visible.
    assert dag.test(logical_date=HOUR).state == "failed"
    letters = [
        json.loads(line) for line in _read(workdir, "dead_letters", HOUR, "dead_letters.ndjson").splitlines()
    ]
    assert {letter["id"] for letter in letters} == refused
    assert {letter["reason"] for letter in letters} == {"rejected_by_segment"}
    assert services.receiver.accepted_ids() == window.expected - refused

    services.receiver.refuse_message_ids(set())
    assert dag.test(logical_date=HOUR, run_conf={"retry_dead_letters": True}).state == "success"

    assert services.receiver.accepted_ids() == window.expected
    assert services.receiver.stats()["duplicates"] == 0
    assert _read(workdir, "dead_letters", HOUR, "dead_letters.ndjson") == ""
    report = _read(workdir, "dead_letters", HOUR, "report.json")
    assert report["counts"]["sent"] == len(refused)
    totals = report["window_totals"]
    assert totals["sent"] == len(window.expected)
    assert totals["dead_lettered"] == 0
    assert totals["unaccounted"] == 0
    for entry in _read(workdir, "state", HOUR, "files.json"):
        assert entry["read"] == entry["sent"] + sum(entry["dropped"].values()) + entry["dead_lettered"]


def test_a_truncated_file_rewritten_by_braze_is_completed_once_whichever_run_reads_it(env):
    services, dag, workdir = env
    window = Window(services)
    window.hour(HOUR)
    records = generate_records(TYPES[0], 2000, hour=HOUR, rng=random.Random(9), null_external_ratio=0)
    whole = encode_avro(records, avro_schema(TYPES[0]), block_size=200)
    key = build_key(prefix=PREFIX, integration_id="d" * 24, event_type=TYPES[0], hour=HOUR, offset=5)
    window.put(key, whole[: len(whole) // 2])
    assert dag.test(logical_date=HOUR).state == "failed"  # the truncated file is a dead letter
    window.put(key, whole)  # Braze writes the file again, whole: a new ETag
    window.expected |= expected_ids(records, window.seen)

    assert dag.test(logical_date=HOUR + timedelta(hours=1)).state == "success"  # sends the rest, late
    assert _read(workdir, "dead_letters", HOUR, "dead_letters.ndjson") == ""  # settled by that run
    assert dag.test(logical_date=HOUR, run_conf={"retry_dead_letters": True}).state == "success"

    assert services.receiver.accepted_ids() == window.expected
    assert services.receiver.stats()["duplicates"] == 0


def test_a_late_file_half_sent_by_a_failed_run_is_finished_by_the_next_without_repeats(env, monkeypatch):
    import braze_currents.report
    from braze_currents.receiver import Fault

    services, dag, workdir = env
    window = Window(services)
    window.hour(HOUR)
    assert dag.test(logical_date=HOUR).state == "success"
    records = generate_records(TYPES[1], 3000, hour=HOUR, rng=random.Random(4), null_external_ratio=0)
    key = build_key(prefix=PREFIX, integration_id="e" * 24, event_type=TYPES[1], hour=HOUR, offset=6)
    window.put(key, encode_avro(records, avro_schema(TYPES[1])))
    window.expected |= expected_ids(records, window.seen)
    services.receiver.inject(Fault(delay=0.001, times=1), Fault(status=401))
    assert dag.test(logical_date=HOUR + timedelta(hours=1)).state == "failed"
    assert 0 < len(services.receiver.accepted_ids() - (window.expected - expected_ids(records, set())))

    # That run never comes back; once its claim is stale, the next hour's run takes the file over.
    monkeypatch.setattr(braze_currents.report, "LATE_CLAIM_TTL", timedelta(0))
    assert dag.test(logical_date=HOUR + timedelta(hours=2)).state == "success"

    assert services.receiver.accepted_ids() == window.expected
    assert services.receiver.stats()["duplicates"] == 0
    staged = [p for p in (workdir / "staging").rglob("chunk-*") if "date=2026-11-30-09" in str(p)]
    assert staged == []


def test_only_one_of_two_runs_may_send_a_late_file_until_its_claim_goes_stale(tmp_path):
    from braze_currents.report import LATE_CLAIM_TTL, claim_late_file
    from braze_currents.storage import LocalStore

    state, now = LocalStore(tmp_path), datetime(2026, 12, 4, 12, tzinfo=UTC)
    assert claim_late_file(state, "w", "k.avro", "run-a", now=now)
    assert not claim_late_file(state, "w", "k.avro", "run-b", now=now)
    assert claim_late_file(state, "w", "k.avro", "run-a", now=now)  # a retried task keeps its claim
    assert claim_late_file(state, "w", "other.avro", "run-b", now=now)
    later = now + LATE_CLAIM_TTL
    assert claim_late_file(state, "w", "k.avro", "run-b", now=later)
    assert not claim_late_file(state, "w", "k.avro", "run-a", now=later)


def test_a_dry_run_stages_the_exact_bodies_sends_nothing_and_leaves_the_ledger_alone(env):
    services, dag, workdir = env
    window = Window(services)
    window.hour(HOUR)

    assert dag.test(logical_date=HOUR, run_conf={"dry_run": True}).state == "success"

    assert services.receiver.stats()["requests"] == 0
    (folder,) = (workdir / "staging" / "test" / f"date={partition_name(HOUR)}").glob("dry-run-*")
    raw = [
        line for chunk in sorted(folder.glob("chunk-*.ndjson")) for line in chunk.read_bytes().splitlines()
    ]
    bodies = [json.loads(line) for line in raw]
    staged = [event["messageId"] for body in bodies for event in body["batch"]]
    assert len(staged) == len(set(staged)) and set(staged) == window.expected
    assert all(len(line) <= 475_000 for line in raw) and all(len(body["batch"]) <= 2500 for body in bodies)
    report = json.loads(
        (workdir / "dead_letters" / folder.relative_to(workdir / "staging") / "report.json").read_text()
    )
    assert report["dry_run"] is True and report["would_send"] == len(window.expected) and report["balanced"]
    assert not (workdir / "state" / "test" / f"date={partition_name(HOUR)}" / "files.json").exists()

    # The real run still sends everything. (dag.test keeps the last run_conf in the DAG's params.)
    assert dag.test(logical_date=HOUR, run_conf={"dry_run": False}).state == "success"
    assert services.receiver.accepted_ids() == window.expected
    assert list(folder.glob("chunk-*.ndjson")), "the real run leaves the dry run's bodies to read"


def test_filters_and_anonymous_users_shape_what_is_sent_and_every_drop_is_counted(
    airflow_db, tmp_path, monkeypatch
):
    from collections import Counter

    with LocalServices(tmp_path / "services") as services:
        for name, value in services.connection_env().items():
            monkeypatch.setenv(name, value)
        window = Window(services)
        written: dict[str, bytes] = {}

        def keep(key: str, data: bytes) -> None:
            written[key] = data
            window.put(key, data)

        write_window(keep, prefix=PREFIX, hour=HOUR, event_types=TYPES[:3], events_per_type=400)
        records = [record for data in written.values() for record in decode_prefix(data)]
        campaign = Counter(r.get("campaign_id") for r in records if r.get("campaign_id")).most_common(1)[0][0]
        zone = Counter(r.get("timezone") for r in records if r.get("timezone")).most_common(1)[0][0]
        filters = {"campaign_ids": {"deny": [campaign]}, "query": f"timezone != '{zone}'"}
        config = write_config(
            tmp_path / "exports.yaml",
            bucket=services.bucket,
            workdir=tmp_path,
            filters=filters,
            anonymous_users=True,
        )
        monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
        from braze_currents.config import load_config
        from braze_currents_airflow.dag_factory import build_dag

        (current,) = load_config(config)
        assert build_dag(current).test(logical_date=HOUR).state == "success"

        expected: dict[str, str] = {}  # messageId -> "user" or "anonymous"
        seen: set[str] = set()
        for record in sorted(records, key=lambda r: 0):  # file order is kept by the listing per type
            external = (record.get("external_user_id") or "").strip()
            braze_id = (record.get("user_id") or "").strip()
            if not (external or braze_id) or record["id"] in seen:
                continue
            seen.add(record["id"])
            if record.get("campaign_id") == campaign or record.get("timezone") == zone:
                continue
            expected[record["id"]] = "user" if external else "anonymous"
        messages = {m["messageId"]: m for m in services.receiver.accepted_messages()}
        assert set(messages) == set(expected)
        anonymous = [m for m in messages.values() if expected[m["messageId"]] == "anonymous"]
        assert anonymous and all("userId" not in m and m["anonymousId"] for m in anonymous)
        report = _read(tmp_path, "dead_letters", HOUR, "report.json")
        assert report["balanced"]
        dropped = report["counts"]["dropped"]
        assert dropped["filter_campaign_id"] > 0 and dropped["filter_query"] > 0
        assert "missing_external_user_id" not in dropped or dropped["missing_external_user_id"] < 10
