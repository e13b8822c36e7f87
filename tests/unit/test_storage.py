"""Objects written whole before their name is known: an unnamed local file linked in place, or an S3
PUT."""

from __future__ import annotations

import io
import os

import pytest

from braze_currents.localstack import LocalServices
from braze_currents.storage import LocalStore, S3Store


def _write(store, folder: str, parts: list[bytes]):
    pending = store.pending(folder)
    for part in parts:
        pending.file.write(part)
    return pending


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "temporary file"])
def test_a_local_pending_object_has_no_name_until_published(tmp_path, monkeypatch, unnamed):
    if not unnamed:  # a file system without O_TMPFILE: the bytes are copied when published
        import errno
        import tempfile

        real_open = os.open

        def no_tmpfile(path, flags, *args, **kwargs):
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, "not on this file system")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", no_tmpfile)
        monkeypatch.setattr(tempfile, "_O_TMPFILE_WORKS", False)
    store = LocalStore(tmp_path / "staging")
    store.put("w/chunk-1.ndjson", b"from an earlier try")
    pending = _write(store, "w", [b"a" * 100_000, b"b\n"])

    assert pending.linkable is unnamed
    assert [path.name for path in (tmp_path / "staging" / "w").iterdir()] == ["chunk-1.ndjson"]
    where = pending.publish("w/chunk-1.ndjson")

    assert where == str(tmp_path / "staging" / "w" / "chunk-1.ndjson")
    assert store.get("w/chunk-1.ndjson") == b"a" * 100_000 + b"b\n"
    assert [path.name for path in (tmp_path / "staging" / "w").iterdir()] == ["chunk-1.ndjson"]
    assert pending.file.closed


def test_a_discarded_local_pending_object_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path / "staging")
    _write(store, "w", [b"x"]).discard()

    assert list((tmp_path / "staging" / "w").iterdir()) == []


def test_a_process_killed_while_writing_a_pending_object_leaves_nothing(tmp_path):
    import multiprocessing
    import signal

    store = LocalStore(tmp_path / "staging")

    def writer() -> None:
        pending = _write(store, "w", [b"emails and phone numbers" * 10_000])
        pending.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    process = multiprocessing.get_context("fork").Process(target=writer)
    process.start()
    process.join(timeout=60)

    assert process.exitcode == -signal.SIGKILL
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
