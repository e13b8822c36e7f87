"""The per-Current rate cap: its arithmetic on a fake clock, its config, a real run against the receiver."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from braze_currents.config import ConfigError, parse_current
from braze_currents.generator import write_window
from braze_currents.mapping import load_mapping
from braze_currents.prepare import PrepareSettings, prepare_window
from braze_currents.reader import ListedObject
from braze_currents.receiver import SegmentReceiver
from braze_currents.segment_client import SegmentClient
from braze_currents.storage import LocalStore
from braze_currents.throttle import RateLimiter, shared_limiter
from braze_currents.upload import upload_chunk

ROOT = Path(__file__).resolve().parents[2]
HOUR = datetime(2026, 12, 1, 4, tzinfo=UTC)
WRITE_KEY = "throttle-test-key"
BASE_ENTRY = {"name": "paced", "start_date": "2026-12-01T00:00:00Z", "source": {"bucket": "my-bucket"}}


class FakeClock:
    """A clock that only moves when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_events_cap_spaces_each_batch_by_its_own_size() -> None:
    clock = FakeClock()
    limiter = RateLimiter(events_per_second=1000, clock=clock, sleep=clock.sleep)
    starts = []
    for size in (500, 250, 1000, 250):
        limiter.acquire(size)
        starts.append(clock.now - 100.0)
    assert starts == [0.0, 0.5, 0.75, 1.75]


def test_requests_cap_spaces_requests_whatever_their_size() -> None:
    clock = FakeClock()
    limiter = RateLimiter(requests_per_second=50, clock=clock, sleep=clock.sleep)
    for _ in range(101):
        limiter.acquire(2500)
    assert clock.now - 100.0 == pytest.approx(2.0)


def test_the_tighter_cap_wins_at_each_batch() -> None:
    clock = FakeClock()
    limiter = RateLimiter(requests_per_second=10, events_per_second=1000, clock=clock, sleep=clock.sleep)
    limiter.acquire(20)  # events allow the next batch after 0.02 s, requests only after 0.1 s
    limiter.acquire(800)  # now events allow the next after 0.8 s
    limiter.acquire(1)
    assert clock.now - 100.0 == pytest.approx(0.9)


def test_idle_time_is_not_saved_up_for_a_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(events_per_second=100, clock=clock, sleep=clock.sleep)
    limiter.acquire(100)
    clock.now += 60.0  # a long pause, e.g. a slow request
    assert limiter.reserve(100) == 0.0
    assert limiter.reserve(100) == pytest.approx(1.0)


@pytest.mark.parametrize("caps", [{"requests_per_second": 0}, {"events_per_second": -5}])
def test_limiter_refuses_a_cap_that_is_not_positive(caps: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be above 0"):
        RateLimiter(**caps)


def test_upload_tasks_of_one_current_share_one_limiter_per_process() -> None:
    first = shared_limiter("shared_a", events_per_second=1000)
    assert shared_limiter("shared_a", events_per_second=1000) is first
    assert shared_limiter("shared_b", events_per_second=1000) is not first
    assert shared_limiter("shared_a", events_per_second=500) is not first
    assert shared_limiter("shared_c") is None


def test_rate_limit_is_read_from_the_config(tmp_path: Path) -> None:
    entry = {**BASE_ENTRY, "rate_limit": {"requests_per_second": 50, "events_per_second": 1000}}
    current = parse_current(entry, 0, tmp_path)
    assert (current.requests_per_second, current.events_per_second) == (50.0, 1000.0)
    assert parse_current(BASE_ENTRY, 0, tmp_path).events_per_second is None


@pytest.mark.parametrize(
    ("rate_limit", "message"),
    [
        ({"events_per_second": 0}, "Current 'paced'.rate_limit.events_per_second: a number above 0"),
        ({"requests_per_second": "fast"}, "Current 'paced'.rate_limit.requests_per_second: a number above 0"),
        ({"events_per_sec": 10}, "Current 'paced'.rate_limit: unknown key 'events_per_sec'"),
        (1000, "Current 'paced'.rate_limit: a mapping with requests_per_second"),
    ],
)
def test_a_bad_rate_limit_names_the_current_and_the_key(
    tmp_path: Path, rate_limit: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_current({**BASE_ENTRY, "rate_limit": rate_limit}, 0, tmp_path)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[str], int]:
    """About 31,000 events staged in two chunks of 50-event batches."""
    root = tmp_path_factory.mktemp("throttle")
    written: dict[str, bytes] = {}
    files = write_window(
        written.__setitem__,
        prefix="currents",
        hour=HOUR,
        event_types=["users.messages.email.Send", "users.messages.pushnotification.Send"],
        events_per_type=18_000,
        seed=3,
    )
    objects = sorted(
        (ListedObject(f.key, f.size, "etag", f.event_type) for f in files),
        key=lambda listed: (listed.event_type, listed.key),
    )
    staging = LocalStore(root / "staging")
    result = prepare_window(
        objects,
        written.__getitem__,
        mapping=load_mapping(ROOT / "include" / "segment_mapping.yaml"),
        settings=PrepareSettings(
            event_types=frozenset({f.event_type for f in files}), chunk_events=16_000, max_batch_events=50
        ),
        staging=staging,
        folder="w",
    )
    assert len(result.chunks) == 2
    return staging, [chunk.name for chunk in result.chunks], result.staged_events


@pytest.mark.parametrize(
    ("caps", "measure"),
    [({"events_per_second": 1400.0}, "events"), ({"requests_per_second": 28.0}, "requests")],
)
def test_cap_is_honoured_within_10_percent_over_20_seconds_by_two_tasks_sharing_it(
    tmp_path: Path, staged: tuple[LocalStore, list[str], int], caps: dict[str, float], measure: str
) -> None:
    staging, chunk_names, events = staged
    state = LocalStore(tmp_path / "state")
    name = f"paced_{measure}"
    failures: list[BaseException] = []

    def task(chunk_name: str) -> None:
        # Each thread stands for an upload task of the same Current: it builds its own client and asks
        # for the Current's limiter, as UploadChunkOperator does.
        client = SegmentClient(endpoint=receiver.batch_url, write_key=WRITE_KEY, pool_size=4)
        try:
            upload_chunk(
                client,
                staging=staging,
                state=state,
                chunk_name=chunk_name,
                concurrency=4,
                limiter=shared_limiter(name, **caps),
            )
        except BaseException as exc:
            failures.append(exc)
        finally:
            client.close()

    with SegmentReceiver(write_key=WRITE_KEY, out_path=tmp_path / "accepted.ndjson") as receiver:
        tasks = [threading.Thread(target=task, args=(chunk,)) for chunk in chunk_names]
        for thread in tasks:
            thread.start()
        for thread in tasks:
            thread.join()
        arrivals = sorted(receiver.arrivals())
        accepted = receiver.stats()["accepted"]

    assert not failures
    assert accepted == events
    duration = arrivals[-1][0] - arrivals[0][0]
    assert duration >= 20.0
    # What arrived before the last request, over the time it took: the last one opens a new interval.
    if measure == "events":
        rate, cap = sum(n for _, n in arrivals[:-1]) / duration, caps["events_per_second"]
    else:
        rate, cap = (len(arrivals) - 1) / duration, caps["requests_per_second"]
    assert abs(rate - cap) <= 0.10 * cap, f"{rate:.1f} {measure}/s against a cap of {cap}"
