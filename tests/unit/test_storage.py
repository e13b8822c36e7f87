"""Objects written whole before their name is known: a local file renamed in place, or an S3 PUT."""

from __future__ import annotations

import io

import pytest

from braze_currents.localstack import LocalServices
from braze_currents.storage import LocalStore, S3Store


def _write(store, folder: str, parts: list[bytes]):
    pending = store.pending(folder)
    for part in parts:
        pending.file.write(part)
    return pending


def test_a_local_pending_object_is_hidden_until_published_and_written_once(tmp_path):
    store = LocalStore(tmp_path / "staging")
    pending = _write(store, "w", [b"a" * 100_000, b"b\n"])

    assert list(store.list("w")) == []  # half written: no listing shows it
    (hidden,) = (tmp_path / "staging" / "w").iterdir()
    where = pending.publish("w/chunk-1.ndjson")

    assert where == str(tmp_path / "staging" / "w" / "chunk-1.ndjson")
    assert store.get("w/chunk-1.ndjson") == b"a" * 100_000 + b"b\n"
    assert not hidden.exists() and list(store.list("w")) == ["w/chunk-1.ndjson"]


def test_a_discarded_local_pending_object_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path / "staging")
    _write(store, "w", [b"x"]).discard()

    assert list((tmp_path / "staging" / "w").iterdir()) == []


def test_a_pending_object_cannot_be_published_outside_its_store(tmp_path):
    store = LocalStore(tmp_path / "staging")
    pending = _write(store, "w", [b"x"])
    with pytest.raises(ValueError, match="leaves the store"):
        pending.publish("../outside")
    pending.discard()
    assert not (tmp_path / "outside").exists()


def test_puts_and_pending_objects_reach_s3_whole(tmp_path):
    with LocalServices(tmp_path / "services", bucket="work") as services:
        store = S3Store(services.s3_client(), "work", "braze/staging")
        body = bytes(range(256)) * 40_000  # 10 MB, read from the file in pieces
        _write(store, "w", [body[:5_000_000], body[5_000_000:]]).publish("w/chunk-1.ndjson")
        store.put("w/ids.jsonl", io.BytesIO(b'["m1"]\n'))
        discarded = _write(store, "w", [b"never sent"])
        discarded.discard()

        assert store.get("w/chunk-1.ndjson") == body
        assert store.get("w/ids.jsonl") == b'["m1"]\n'
        assert sorted(store.list("w")) == ["w/chunk-1.ndjson", "w/ids.jsonl"]
        assert discarded.file.closed


def test_pending_files_of_a_killed_process_are_removed_by_the_next_writer(tmp_path):
    import os
    import subprocess
    import sys

    from braze_currents.processes import pid_namespace

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "staging" / "w"
    folder.mkdir(parents=True)
    left = folder / f".pending-{pid_namespace()}-{gone.pid}-abc"
    running = folder / f".pending-{pid_namespace()}-{os.getpid()}-def"
    elsewhere = folder / f".pending-{pid_namespace() + 1}-{gone.pid}-ghi"  # another pid namespace
    for path in (left, running, elsewhere):
        path.write_bytes(b"events")

    pending = LocalStore(tmp_path / "staging").pending("w")

    assert not left.exists() and running.exists() and elsewhere.exists()
    pending.discard()
