"""An upload task killed with SIGKILL mid-upload loses nothing when it is retried."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from braze_currents.generator import avro_schema, encode_avro, generate_records
from braze_currents.mapping import load_mapping
from braze_currents.prepare import PrepareSettings, prepare_window
from braze_currents.reader import ListedObject
from braze_currents.receiver import Fault, SegmentReceiver
from braze_currents.report import summarise_window
from braze_currents.segment_client import SegmentClient
from braze_currents.storage import LocalStore
from braze_currents.upload import acked_batches, upload_chunk
from tests.helpers import ROOT, TYPES, expected_ids

HOUR = datetime(2026, 11, 30, 7, tzinfo=UTC)
BATCH = 500

# The upload task, as its own process: what a worker runs for one mapped upload_chunk task.
TASK = """
import os, sys
from braze_currents.segment_client import SegmentClient
from braze_currents.storage import LocalStore
from braze_currents.upload import upload_chunk
client = SegmentClient(endpoint=os.environ["ENDPOINT"], write_key=os.environ["WRITE_KEY"])
upload_chunk(client, staging=LocalStore(sys.argv[1]), state=LocalStore(sys.argv[2]), chunk_name=sys.argv[3],
             concurrency=1)
"""


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_sigkilled_upload_resumes_after_the_acknowledged_batches(tmp_path):
    records = generate_records(TYPES[0], 5000, hour=HOUR, rng=random.Random(5), null_external_ratio=0)
    data = encode_avro(records, avro_schema(TYPES[0]))
    staging, state, letters = (LocalStore(tmp_path / name) for name in ("staging", "state", "letters"))
    result = prepare_window(
        [ListedObject("currents/file.avro", len(data), "etag", TYPES[0])],
        lambda key: data,
        mapping=load_mapping(ROOT / "include" / "segment_mapping.yaml"),
        settings=PrepareSettings(event_types=frozenset(TYPES), max_batch_events=BATCH),
        staging=staging,
        folder="w",
    )
    (chunk,) = result.chunks
    assert chunk.batches >= 8
    expected = expected_ids(records, set())
    write_key = "k-" + os.urandom(8).hex()

    with SegmentReceiver(write_key=write_key, out_path=tmp_path / "accepted.ndjson") as receiver:
        # Four batches go through; the fifth is answered only after the task is dead.
        receiver.inject(Fault(delay=0.001, times=4), Fault(delay=1.0))
        env = {**os.environ, "ENDPOINT": receiver.batch_url, "WRITE_KEY": write_key}
        task = subprocess.Popen(
            [sys.executable, "-c", TASK, str(tmp_path / "staging"), str(tmp_path / "state"), chunk.name],
            env=env,
        )
        try:
            _wait_for(lambda: receiver.stats()["requests"] == 5, "the fifth request")
            task.send_signal(signal.SIGKILL)
        finally:
            assert task.wait(timeout=30) == -signal.SIGKILL
        assert acked_batches(state, chunk.name) == {0, 1, 2, 3}
        _wait_for(lambda: receiver.stats()["accepted"] >= 5 * BATCH, "the late answer to the fifth batch")

        # Airflow's retry: the same task code, in a fresh process state.
        client = SegmentClient(endpoint=receiver.batch_url, write_key=write_key)
        retried = upload_chunk(client, staging=staging, state=state, chunk_name=chunk.name, concurrency=2)
        client.close()

        assert retried.skipped_batches == 4
        assert receiver.accepted_ids() == expected
        assert 0 < receiver.stats()["duplicates"] <= BATCH  # only the batch in flight, same messageIds
        assert receiver.stats()["requests"] == 5 + chunk.batches - 4

    letters.put("w/prepare-dead-letters.ndjson", b"")
    prepared = {
        "window": HOUR.isoformat(),
        "chunks": [dataclasses.asdict(chunk)],
        "counts": {"events_read": result.events_read, "dropped": dict(result.dropped)},
        "source_files": result.source_files,
    }
    report = summarise_window(prepared, {}, staging=staging, state=state, dead_letters=letters, folder="w")
    assert report["balanced"] and report["counts"]["sent"] == len(expected)
