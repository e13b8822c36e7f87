"""Prepare with worker processes stages exactly what one process stages, hostile files included.

Files are read in workers that know nothing of the rest of the window; the parent then drops the ids
that earlier files had. These tests pin the cases where that order matters: a later file's repeat of
an id that it would have filtered out, dead-lettered or found already sent.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import braze_currents.prepare as prepare_module
from braze_currents.filters import check_filters
from braze_currents.generator import avro_schema, encode_avro, generate_records
from braze_currents.keys import build_key
from braze_currents.mapping import load_mapping
from braze_currents.prepare import PrepareSettings, prepare_window
from braze_currents.reader import ListedObject
from braze_currents.storage import LocalStore
from tests.helpers import PREFIX, ROOT

HOUR = datetime(2026, 11, 30, 5, tzinfo=UTC)
SEND = "users.messages.email.Send"
OPEN = "users.messages.email.Open"
DENIED_CAMPAIGN = "campaign-denied"


def _key(event_type: str, letter: str, offset: int) -> str:
    return build_key(
        prefix=PREFIX, integration_id=letter * 24, event_type=event_type, hour=HOUR, offset=offset
    )


@dataclasses.dataclass
class Window:
    objects: list[ListedObject]
    data: dict[str, bytes]
    cases: dict[str, str]  # what each crafted repeat is -> its id
    already_sent: set[str]

    def fetch(self, key: str) -> bytes:
        return self.data[key]


@pytest.fixture(scope="module")
def window() -> Window:
    rng = random.Random(11)
    data: dict[str, bytes] = {}
    objects: list[ListedObject] = []

    def add(event_type: str, letter: str, offset: int, blob: bytes) -> None:
        key = _key(event_type, letter, offset)
        data[key] = blob
        objects.append(ListedObject(key, len(blob), f"etag-{letter}{offset}", event_type))

    first = generate_records(SEND, 6000, hour=HOUR, rng=rng, null_external_ratio=0.1, duplicate_ratio=0.02)
    for record in first[:4]:
        record["external_user_id"] = f"cust-{record['id'][:6]}"
    later = generate_records(SEND, 4000, hour=HOUR, rng=rng, null_external_ratio=0.1, duplicate_ratio=0.02)
    cases = {}
    # A later file repeats ids of the first file, each with a fate of its own had it come first.
    for index, case in enumerate(("plain", "filtered", "too_big", "already_sent")):
        repeat = dict(first[index])
        repeat["external_user_id"] = "cust-repeat"
        cases[case] = repeat["id"]
        later[index * 7] = repeat
    later[7]["campaign_id"] = DENIED_CAMPAIGN
    later[14]["campaign_name"] = "x" * 40_000
    # And the same fates for ids the later file has first: these are its own to decide.
    later[100], later[101] = (
        dict(later[100], external_user_id="cust-own"),
        dict(later[101], external_user_id="cust-own"),
    )
    later[100]["campaign_id"] = DENIED_CAMPAIGN
    later[101]["campaign_name"] = "y" * 40_000
    later[102]["id"] = ""
    schema = avro_schema(SEND)
    add(SEND, "a", 1, encode_avro(first, schema, block_size=700))
    add(SEND, "b", 2, encode_avro(later, schema, block_size=700))
    whole = encode_avro(generate_records(OPEN, 3000, hour=HOUR, rng=rng), avro_schema(OPEN), block_size=400)
    add(OPEN, "c", 3, whole[: len(whole) * 2 // 3])  # truncated
    add(OPEN, "d", 4, b"")  # undecodable
    canvas = generate_records("users.canvas.Entry", 500, hour=HOUR, rng=rng)
    add("users.canvas.Entry", "e", 5, encode_avro(canvas, avro_schema("users.canvas.Entry")))  # not selected
    objects.append(objects[0])  # listed twice
    for offset in range(6, 10):  # more files than workers, so they queue
        records = generate_records(OPEN, 1500, hour=HOUR, rng=rng, null_external_ratio=0.1)
        records[0] = {**records[0], "id": later[200 + offset]["id"]}  # a repeat across event types
        add(OPEN, "f", offset, encode_avro(records, avro_schema(OPEN)))
    already_sent = {first[3]["id"], later[300]["id"]}
    return Window(objects, data, cases, already_sent)


def _prepare(window: Window, staging: Path, workers: int) -> Any:
    settings = PrepareSettings(
        event_types=frozenset({SEND, OPEN}),
        chunk_events=2_500,
        filters=check_filters({"campaign_ids": {"deny": [DENIED_CAMPAIGN]}}, "filters"),
    )
    return prepare_window(
        window.objects,
        window.fetch,
        mapping=load_mapping(ROOT / "include" / "segment_mapping.yaml"),
        settings=settings,
        staging=LocalStore(staging),
        folder="w",
        seen_ids=window.already_sent,
        workers=workers,
    )


def _staged(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def _without_times(result: Any) -> dict[str, Any]:
    """The result as data, without the dead letters' times (the runs are seconds apart) and the
    decoders: this test process has polars loaded, so the workers it forks decode with fastavro, and
    one process's polars is checked against them."""
    data = dataclasses.asdict(result)
    data.pop("decoded_by")
    for letter in data["dead_letters"]:
        letter.pop("at")
    return data


@pytest.fixture(scope="module")
def in_one_process(window: Window, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, bytes]]:
    staging = tmp_path_factory.mktemp("one")
    return _prepare(window, staging, 1), _staged(staging)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_stage_the_same_bytes_and_counts_as_one_process(
    window, in_one_process, workers, tmp_path, monkeypatch
):
    readers = tmp_path / "readers"
    readers.mkdir()
    start_worker = prepare_module._start_worker

    def recording(*args: Any) -> None:
        (readers / str(os.getpid())).touch()
        start_worker(*args)

    # A forked worker gets its initializer without pickling, so a local function will do.
    monkeypatch.setattr(prepare_module, "_start_worker", recording)
    spools = tmp_path / "tmp"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))
    one, staged_by_one = in_one_process

    result = _prepare(window, tmp_path / "staging", workers)

    pids = {int(path.name) for path in readers.iterdir()}
    assert pids and os.getpid() not in pids, "the files were read in worker processes"
    assert _staged(tmp_path / "staging") == staged_by_one
    assert _without_times(result) == _without_times(one)
    assert list(spools.iterdir()) == [], "the spool files and their folder are removed"


def test_a_later_files_repeat_is_a_duplicate_whatever_that_file_would_have_done_with_it(
    window, in_one_process
):
    result, staged = in_one_process
    later = next(source for source in result.source_files if source["key"] == window.objects[1].key)
    letters = [letter for letter in result.dead_letters if letter.key == window.objects[1].key]
    # The later file's own filtered, oversize and id-less events are its own outcomes...
    assert later["dropped"]["filter_campaign_id"] == 1
    assert [letter.reason for letter in letters] == ["missing_id", "event_over_32kb"]
    # ...while its repeats of the first file's ids are duplicates, not filtered, dead-lettered or sent.
    assert all(letter.id not in window.cases.values() for letter in letters)
    bodies = b"".join(data for name, data in staged.items() if name.endswith(".ndjson"))
    repeat_user = b'"userId":"cust-repeat"'
    assert repeat_user not in bodies
    assert later["dropped"]["duplicate_id"] >= len(window.cases)


def test_the_window_balances_file_by_file(in_one_process):
    result, _ = in_one_process
    assert result.files_listed_twice == 1 and result.files_failed == 2
    for source in result.source_files:
        assert source["read"] == sum(source["dropped"].values()) + source["dead_lettered"] + source["staged"]
    assert result.events_read == (result.staged_events + sum(result.dropped.values()) + result.dead_lettered)


_ORIGINAL_READ = prepare_module._read_to_spool


def _dies_on_the_second_file(key: str, event_type: str, source: str, spool: str) -> Any:
    if "+0+2." in key:
        os._exit(9)  # as the kernel's OOM killer would leave it
    return _ORIGINAL_READ(key, event_type, source, spool)


def test_a_worker_that_dies_fails_the_task_saying_where_it_stopped_and_the_way_out(
    window, tmp_path, monkeypatch
):
    monkeypatch.setattr(prepare_module, "_read_to_spool", _dies_on_the_second_file)
    spools = tmp_path / "tmp"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))

    with pytest.raises(
        RuntimeError,
        match=r"worker process died .* before currents/.*\.avro and the files after it.*prepare_workers: 1",
    ):
        _prepare(window, tmp_path / "staging", 2)

    assert list(spools.iterdir()) == []


def test_a_worker_that_dies_before_the_next_file_is_handed_over_fails_the_task_alike(
    window, tmp_path, monkeypatch
):
    """The pool can break between two submits, so that handing over the next file raises at once."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    submitted = []
    submit = ProcessPoolExecutor.submit

    def breaks_on_the_third(self: Any, *args: Any, **kwargs: Any) -> Any:
        submitted.append(args[1])
        if len(submitted) == 3:
            raise BrokenProcessPool("A child process terminated abruptly")
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", breaks_on_the_third)
    spools = tmp_path / "tmp"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))

    with pytest.raises(RuntimeError, match=r"worker process died .* before currents/.*prepare_workers: 1"):
        _prepare(window, tmp_path / "staging", 2)

    assert len(submitted) == 3, "no file is handed over once the pool is broken"
    assert list(spools.iterdir()) == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_workers_start_under_a_daemonic_process_as_celery_runs_tasks(window, in_one_process, tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    done = context.Queue()

    def task() -> None:  # forked, so a closure will do
        result = _prepare(window, tmp_path / "staging", 2)
        done.put((result.staged_events, len(multiprocessing.active_children())))

    process = context.Process(target=task, daemon=True)
    process.start()
    staged, children_left = done.get(timeout=120)
    process.join(timeout=60)

    assert process.exitcode == 0
    assert staged == in_one_process[0].staged_events
    assert children_left == 0, "the workers are stopped before prepare returns"
    assert _staged(tmp_path / "staging") == in_one_process[1]


def test_workers_die_with_a_task_killed_mid_window(window, tmp_path, monkeypatch):
    import multiprocessing
    import signal

    pids_file = tmp_path / "workers.txt"
    spools = tmp_path / "tmp"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))
    context = multiprocessing.get_context("fork")

    def task() -> None:
        fetched = []

        def fetch(key: str) -> bytes:
            fetched.append(key)
            if len(fetched) == 4:  # the pool is up and busy: the task is killed here
                pids = [child.pid for child in multiprocessing.active_children()]
                pids_file.write_text(" ".join(map(str, pids)))
                os.kill(os.getpid(), signal.SIGKILL)
            return window.fetch(key)

        prepare_window(
            window.objects,
            fetch,
            mapping=load_mapping(ROOT / "include" / "segment_mapping.yaml"),
            settings=PrepareSettings(event_types=frozenset({SEND, OPEN})),
            staging=LocalStore(tmp_path / "staging"),
            folder="w",
            workers=2,
        )

    process = context.Process(target=task)
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL
    workers = [int(pid) for pid in pids_file.read_text().split()]
    assert len(workers) == 2

    # The kernel delivers the workers' death signal as their parent dies; wait for it to land.
    import time

    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "no worker outlives its task"

    # The killed task's spool folder, with the objects it had saved, is left, unlocked; the next
    # prepare removes it. A folder whose lock a live task holds, and things that only look like
    # spool folders (a file, a link to a folder), stay.
    (left,) = spools.iterdir()
    assert any(path.suffix == ".avro" for path in left.iterdir())
    live, live_lock = prepare_module._spool_folder()
    lookalike = spools / "braze-currents-prepare-file"
    lookalike.write_bytes(b"not a folder")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_bytes(b"x")
    (spools / "braze-currents-prepare-link").symlink_to(target)
    monkeypatch.setattr(prepare_module, "_SPOOL_GRACE_SECONDS", 0.0)
    try:
        _prepare(window, tmp_path / "staging-after", 1)
    finally:
        os.close(live_lock)
    names = sorted(path.name for path in spools.iterdir())
    assert names == sorted([Path(live).name, lookalike.name, "braze-currents-prepare-link"])
    assert (target / "keep").exists()


def test_a_worker_whose_task_died_before_it_started_stops_at_once():
    """The kernel's death signal covers only a parent that dies after the worker asks for it; a worker
    that starts late (a busy machine) and finds another parent must stop by itself."""
    import multiprocessing

    def late_worker() -> None:
        prepare_module._die_with_parent(os.getppid() + 1_000_000)  # not its parent: the task is gone
        os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=late_worker)
    process.start()
    process.join(timeout=60)

    assert process.exitcode == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_objects_streamed_from_s3_and_chunks_staged_to_s3_are_the_same_bytes(
    window, in_one_process, workers, tmp_path
):
    """The task hands prepare each object's S3 body, a stream, and stages chunks from a temporary file:
    neither changes a byte, and every body is read to its end and closed."""
    from braze_currents.localstack import LocalServices
    from braze_currents.storage import S3Store

    one, staged_by_one = in_one_process
    with LocalServices(tmp_path / "services", bucket="source") as services:
        client = services.s3_client()
        client.create_bucket(Bucket="work")
        for key, blob in window.data.items():
            client.put_object(Bucket="source", Key=key, Body=blob)
        bodies = []

        class Body:
            """An S3 response body that remembers whether it was read to its end and closed."""

            def __init__(self, key: str) -> None:
                self.body = client.get_object(Bucket="source", Key=key)["Body"]
                self.ended = self.closed = False

            def read(self, size: int = -1) -> bytes:
                data = self.body.read(size)
                self.ended = self.ended or not data or size < 0
                return data

            def close(self) -> None:
                self.body.close()
                self.closed = True

        def fetch(key: str) -> Any:
            bodies.append(Body(key))
            return bodies[-1]

        staging = S3Store(client, "work", "braze/staging")
        result = prepare_window(
            window.objects,
            fetch,
            mapping=load_mapping(ROOT / "include" / "segment_mapping.yaml"),
            settings=PrepareSettings(
                event_types=frozenset({SEND, OPEN}),
                chunk_events=2_500,
                filters=check_filters({"campaign_ids": {"deny": [DENIED_CAMPAIGN]}}, "filters"),
            ),
            staging=staging,
            folder="w",
            seen_ids=window.already_sent,
            workers=workers,
        )
        staged = {name: staging.get(name) for name in staging.list("w")}

    assert staged == staged_by_one
    assert [chunk.bytes for chunk in result.chunks] == [len(staged[chunk.name]) for chunk in result.chunks]
    assert _without_times(result) == _without_times(one)
    assert len(bodies) == len(window.data) and all(body.ended and body.closed for body in bodies)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_prepare_that_fails_mid_chunk_leaves_no_partial_chunk(window, workers, tmp_path):
    """The chunk being written when prepare fails is dropped; the chunks before it stay, as before."""
    fetched = []

    def fetch(key: str) -> bytes:
        fetched.append(key)
        if len(fetched) == 6:
            raise ConnectionError("the network went away")
        return window.data[key]

    with pytest.raises(ConnectionError):
        prepare_window(
            window.objects,
            fetch,
            mapping=load_mapping(ROOT / "include" / "segment_mapping.yaml"),
            settings=PrepareSettings(event_types=frozenset({SEND, OPEN}), chunk_events=4_000),
            staging=LocalStore(tmp_path / "staging"),
            folder="w",
            workers=workers,
        )

    names = sorted(path.name for path in (tmp_path / "staging" / "w").iterdir())
    assert names and all(name.startswith("chunk-") for name in names), names
