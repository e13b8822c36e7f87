"""The fault matrix: each fault injected into a generated window of a few thousand events.

Every case runs the task code in order (list, prepare, upload each chunk with the retries Airflow
would give it, summarise) against the moto server and the local receiver, then checks that Segment
holds exactly the expected messageIds, that the ledger balances and that requests stay bounded.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from braze_currents.deadletters import to_ndjson
from braze_currents.keys import parse_key
from braze_currents.localstack import LocalServices
from braze_currents.mapping import load_mapping
from braze_currents.prepare import PrepareSettings, prepare_window
from braze_currents.reader import list_window
from braze_currents.receiver import Fault
from braze_currents.report import summarise_window
from braze_currents.segment_client import (
    RetryPolicy,
    SegmentAuthError,
    SegmentClient,
    SegmentUnavailableError,
)
from braze_currents.storage import LocalStore, S3Store
from braze_currents.upload import sent_ids, upload_chunk
from tests.helpers import PREFIX, ROOT, TYPES, FlakyProxy, decode_prefix, expected_ids

HOUR = datetime(2026, 11, 30, 7, tzinfo=UTC)
FOLDER = "test/date=2026-11-30-07"
TASK_TRIES = 3  # the first try and two Airflow retries


@dataclasses.dataclass
class Run:
    """What one pass of the task code did."""

    report: dict[str, Any] | None
    batches: int
    error: Exception | None = None


class Pipeline:
    """The task code of one window, wired to the local services, with a fresh ledger per test."""

    def __init__(self, services: LocalServices, proxy: FlakyProxy, workdir: Path) -> None:
        from braze_currents.generator import s3_put, write_window

        self.services, self.proxy = services, proxy
        self.staging = LocalStore(workdir / "staging")
        self.state = S3Store(proxy.s3_client(), services.bucket, "ledger")  # the ledger through the proxy
        self.letters = LocalStore(workdir / "dead_letters")
        self.mapping = load_mapping(ROOT / "include" / "segment_mapping.yaml")
        put = s3_put(services.s3_client(), services.bucket)
        written: dict[str, bytes] = {}

        def keep(key: str, data: bytes) -> None:
            written[key] = data
            put(key, data)

        write_window(keep, prefix=PREFIX, hour=HOUR, event_types=TYPES[:3], events_per_type=1500)
        seen: set[str] = set()
        self.expected: set[str] = set()
        self.in_order: list[str] = []  # the ids to send, in the order the listing reads them
        for key in sorted(written, key=lambda key: (parse_key(key).event_type, key)):
            records = decode_prefix(written[key])
            ids = expected_ids(records, seen)
            self.expected |= ids
            self.in_order.extend(record["id"] for record in records if record["id"] in ids)

    def client(self, *, read_timeout: float = 5.0) -> SegmentClient:
        return SegmentClient(
            endpoint=self.services.receiver.batch_url,
            write_key=self.services.write_key,
            policy=RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_max=0.5),
            timeout=(2.0, read_timeout),
            pool_size=2,
        )

    def run(self, *, read_timeout: float = 5.0) -> Run:
        """List, prepare, upload (retrying a chunk as Airflow would) and summarise the window once."""
        s3 = self.proxy.s3_client()
        try:
            listing = list_window(
                s3, bucket=self.services.bucket, prefix=PREFIX, hour=HOUR, event_types=TYPES
            )
            result = prepare_window(
                listing.objects,
                lambda key: s3.get_object(Bucket=self.services.bucket, Key=key)["Body"].read(),
                mapping=self.mapping,
                settings=PrepareSettings(
                    event_types=frozenset(TYPES), chunk_events=2500, max_batch_events=500
                ),
                staging=self.staging,
                folder=FOLDER,
                seen_ids=sent_ids(self.state, FOLDER),
            )
        except Exception as exc:  # an S3 outage fails the prepare task; Airflow retries it later
            return Run(None, 0, exc)
        self.letters.put(f"{FOLDER}/prepare-dead-letters.ndjson", to_ndjson(result.dead_letters))
        chunks = [dataclasses.asdict(chunk) for chunk in result.chunks]
        client = self.client(read_timeout=read_timeout)
        try:
            for chunk in chunks:
                for attempt in range(TASK_TRIES):
                    try:
                        upload_chunk(
                            client,
                            staging=self.staging,
                            state=self.state,
                            chunk_name=chunk["name"],
                            concurrency=2,
                        )
                        break
                    except SegmentAuthError as exc:
                        return Run(None, 0, exc)  # no retries: the key must be fixed first
                    except (SegmentUnavailableError, OSError, Exception) as exc:
                        if attempt == TASK_TRIES - 1:
                            return Run(None, 0, exc)
        finally:
            client.close()
        prepared = {
            "window": HOUR.isoformat(),
            "folder": FOLDER,
            "chunks": chunks,
            "counts": {"events_read": result.events_read, "dropped": dict(result.dropped)},
            "source_files": result.source_files,
        }
        report = summarise_window(
            prepared, {}, staging=self.staging, state=self.state, dead_letters=self.letters, folder=FOLDER
        )
        return Run(report, sum(chunk["batches"] for chunk in chunks))


@pytest.fixture
def pipeline(tmp_path):
    with LocalServices(tmp_path / "services") as services, FlakyProxy(services.s3_endpoint) as proxy:
        yield Pipeline(services, proxy, tmp_path)


def _clean_run(pipeline: Pipeline, **kwargs: Any) -> Run:
    run = pipeline.run(**kwargs)
    assert run.error is None, run.error
    assert run.report["balanced"], run.report["balance"]
    return run


def _delivered_exactly(pipeline: Pipeline, *, allowed_repeats: int = 0) -> None:
    receiver = pipeline.services.receiver
    assert receiver.accepted_ids() == pipeline.expected
    assert receiver.stats()["duplicates"] <= allowed_repeats


@pytest.mark.parametrize(
    ("faults", "extra_requests"),
    [
        pytest.param([Fault(status=429, retry_after=0.05, times=6)], 6, id="429-burst-with-retry-after"),
        pytest.param([Fault(status=500, times=2), Fault(status=502), Fault(status=503)], 4, id="5xx"),
        pytest.param([Fault(drop_connection=True, times=3)], 3, id="connection-resets"),
    ],
)
def test_retriable_faults_deliver_every_event_once_with_bounded_requests(pipeline, faults, extra_requests):
    pipeline.services.receiver.inject(*faults)

    run = _clean_run(pipeline)

    _delivered_exactly(pipeline)
    assert pipeline.services.receiver.stats()["requests"] == run.batches + extra_requests
    assert run.report["window_totals"]["unaccounted"] == 0


def test_a_response_slower_than_the_client_timeout_is_retried_with_the_same_message_ids(pipeline):
    # The receiver takes the batch in after the client gave up: the retry repeats those messageIds.
    pipeline.services.receiver.inject(Fault(delay=1.0))

    run = _clean_run(pipeline, read_timeout=0.5)

    _delivered_exactly(pipeline, allowed_repeats=500)  # at most the one batch that timed out
    assert pipeline.services.receiver.stats()["duplicates"] > 0  # the late answer did count twice
    assert pipeline.services.receiver.stats()["requests"] == run.batches + 1


def test_one_bad_event_in_a_batch_is_isolated_as_a_dead_letter(pipeline):
    bad = sorted(pipeline.expected)[10]
    pipeline.services.receiver.refuse_message_ids({bad})

    run = _clean_run(pipeline)

    receiver = pipeline.services.receiver
    assert receiver.accepted_ids() == pipeline.expected - {bad}
    letters = [letter for letter in run.report["files"] if letter["dead_lettered"]]
    assert len(letters) == 1 and letters[0]["dead_lettered"] == 1
    assert run.report["counts"]["dead_lettered"] == 1
    # Halving a 500-event batch down to one event: two requests per halving, ceil(log2(500)) + 1 halvings.
    assert receiver.stats()["requests"] <= run.batches + 2 * 10


def test_a_401_midway_stops_at_once_and_the_rerun_completes(pipeline):
    receiver = pipeline.services.receiver
    receiver.inject(Fault(delay=0.001, times=3), Fault(status=401))

    failed = pipeline.run()
    assert isinstance(failed.error, SegmentAuthError)
    assert receiver.stats()["requests"] <= 3 + 1 + 2  # three good, the 401, and what was in flight
    assert 0 < len(receiver.accepted_ids()) < len(pipeline.expected)

    _clean_run(pipeline)  # the key is fixed: nothing queued answers 401 any more

    _delivered_exactly(pipeline)


@pytest.mark.parametrize("drop", [False, True], ids=["503-slowdown", "connection-drops"])
def test_an_s3_endpoint_failing_for_a_while_delays_the_window_but_loses_nothing(pipeline, drop):
    pipeline.proxy.fail_next(2, drop=drop)  # short: boto3's own retries ride it out
    _clean_run(pipeline)
    _delivered_exactly(pipeline)
    assert pipeline.proxy.failed == 2


def test_an_s3_outage_fails_the_task_and_the_retry_after_it_sends_each_event_once(pipeline):
    pipeline.proxy.fail_next(1000)  # longer than every retry of the run
    failed = pipeline.run()
    assert failed.error is not None
    assert pipeline.services.receiver.stats()["requests"] == 0

    pipeline.proxy.fail_next(0)
    _clean_run(pipeline)
    _delivered_exactly(pipeline)


def test_the_ledger_failing_mid_upload_repeats_at_most_the_unrecorded_batches(pipeline):
    # Segment takes batches, but writing their acknowledgements to the ledger fails for a while:
    # the retry sends those batches again, with the same messageIds.
    receiver = pipeline.services.receiver
    receiver.inject(Fault(delay=0.05, times=2))
    pipeline.proxy.fail_next(0)
    original_put = pipeline.state.put
    calls = {"n": 0}

    def flaky_put(name: str, data: bytes) -> str:
        calls["n"] += 1
        if ".acks/" in name and calls["n"] in (2, 3):
            raise OSError("injected: the ledger store is unavailable")
        return original_put(name, data)

    pipeline.state.put = flaky_put
    run = _clean_run(pipeline)
    _delivered_exactly(pipeline, allowed_repeats=2 * 500)
    assert receiver.stats()["duplicates"] > 0  # the unrecorded batches did go out twice
    assert receiver.stats()["requests"] <= run.batches + 2 * 2


def test_a_batch_refused_event_after_event_is_dead_lettered_without_a_request_storm(pipeline):
    # Every event of about one batch is bad: isolating each would take two requests per event.
    bad = set(pipeline.in_order[:600])
    pipeline.services.receiver.refuse_message_ids(bad)

    run = _clean_run(pipeline)

    receiver = pipeline.services.receiver
    accepted = receiver.accepted_ids()
    assert not accepted & bad and len(accepted) > len(pipeline.expected) // 2
    # Past ten bad events a batch counts as refused whole: its other events wait as dead letters.
    assert run.report["counts"]["dead_lettered"] == len(pipeline.expected) - len(accepted)
    assert run.report["window_totals"]["unaccounted"] == 0
    assert receiver.stats()["requests"] < run.batches + 150  # not 2 x 600
