"""The ledger's bookkeeping: per-file outcomes, reread files and staged retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from braze_currents.deadletters import DeadLetter, to_ndjson
from braze_currents.report import ACKNOWLEDGED_MARK, summarise_window, sweep_staged
from braze_currents.storage import LocalStore

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def _stores(tmp_path):
    return tuple(LocalStore(tmp_path / name) for name in ("staging", "state", "letters"))


def _prepared(folder: str, *, read: int, dropped: dict, chunks=(), files=None) -> dict:
    return {
        "window": "2026-12-04T10:00:00+00:00",
        "folder": folder,
        "chunks": list(chunks),
        "counts": {"events_read": read, "dropped": dropped},
        "source_files": files or [],
    }


def test_staged_chunks_are_kept_for_the_retention_then_swept(tmp_path):
    staging = _stores(tmp_path)[0]
    for hours_ago, window in ((30, "c/date=2026-12-03-06"), (2, "c/date=2026-12-04-10")):
        staging.put(f"{window}/chunk-0000-aa.ndjson", b"{}\n")
        at = (NOW - timedelta(hours=hours_ago)).isoformat()
        mark = {"at": at, "names": [f"{window}/chunk-0000-aa.ndjson"]}
        staging.put(f"{window}/{ACKNOWLEDGED_MARK}", orjson.dumps(mark))
        staging.put(f"{window}/chunk-0001-bb.ndjson", b"{}\n")  # a rerun's, staged after the mark

    deleted = sweep_staged(staging, "c", timedelta(hours=24), NOW)

    assert deleted == 1
    assert list(staging.list("c/")) == [
        "c/date=2026-12-03-06/chunk-0001-bb.ndjson",
        f"c/date=2026-12-04-10/{ACKNOWLEDGED_MARK}",
        "c/date=2026-12-04-10/chunk-0000-aa.ndjson",
        "c/date=2026-12-04-10/chunk-0001-bb.ndjson",
    ]


def test_a_summary_with_retention_keeps_its_chunks_and_marks_them(tmp_path):
    staging, state, letters = _stores(tmp_path)
    folder = "c/date=2026-12-04-10"
    staging.put(f"{folder}/chunk-0000-aa.ndjson", b"{}\n")
    letters.put(f"{folder}/prepare-dead-letters.ndjson", b"")
    chunk = {"chunk_id": "0000-aa", "name": f"{folder}/chunk-0000-aa.ndjson", "batches": 0}

    report = summarise_window(
        _prepared(folder, read=0, dropped={}, chunks=[chunk]),
        {},
        staging=staging,
        state=state,
        dead_letters=letters,
        folder=folder,
        retention_hours=6,
        now=NOW,
    )

    assert report["balanced"] and report["staged_swept"] == 0
    assert staging.exists(chunk["name"])
    mark = {"at": NOW.isoformat(), "names": [chunk["name"]]}
    assert orjson.loads(staging.get(f"{folder}/{ACKNOWLEDGED_MARK}")) == mark


def test_a_rerun_that_does_not_read_a_file_keeps_its_dead_letters(tmp_path):
    staging, state, letters = _stores(tmp_path)
    folder = "c/date=2026-12-04-10"
    letter = DeadLetter("truncated_file", "k/a.avro", "users.messages.email.Send", detail="cut")
    letters.put(f"{folder}/prepare-dead-letters.ndjson", to_ndjson([letter]))
    dropped = {"missing_external_user_id": 5}
    files = [{"key": "k/a.avro", "etag": "e", "size": 1, "read": 5, "dropped": dropped, "staged": 0}]
    summarise_window(
        _prepared(folder, read=5, dropped=dropped, files=files),
        {},
        staging=staging,
        state=state,
        dead_letters=letters,
        folder=folder,
    )
    # A rerun: the file is done, nothing is read, and the letter must still be on record.
    letters.put(f"{folder}/prepare-dead-letters.ndjson", b"")
    report = summarise_window(
        _prepared(folder, read=0, dropped={}),
        {},
        staging=staging,
        state=state,
        dead_letters=letters,
        folder=folder,
    )

    assert report["open_dead_letters"] == 1
    assert b"truncated_file" in letters.get(f"{folder}/dead_letters.ndjson")
    assert report["balanced"]
    assert report["window_totals"]["read"] == 5 and report["window_totals"]["unaccounted"] == 0


def test_a_file_read_again_folds_already_sent_events_back_into_sent(tmp_path):
    staging, state, letters = _stores(tmp_path)
    folder = "c/date=2026-12-04-10"
    unmappable = [DeadLetter("unmappable_event", "k/a.avro", None, f"id-{n}", n) for n in range(2)]
    letters.put(f"{folder}/prepare-dead-letters.ndjson", to_ndjson(unmappable))
    first = {
        "key": "k/a.avro",
        "etag": "e",
        "size": 1,
        "read": 10,
        "dropped": {},
        "dead_lettered": 0,
        "staged": 0,
    }
    state.put(
        f"{folder}/files.json",
        orjson.dumps([{**first, "sent": 8, "dead_lettered": 2, "dropped": {}}]),
    )
    again = {**first, "dropped": {"already_sent": 8}, "staged": 0, "dead_lettered": 2}

    report = summarise_window(
        _prepared(folder, read=10, dropped={"already_sent": 8}, files=[again]),
        {},
        staging=staging,
        state=state,
        dead_letters=letters,
        folder=folder,
    )

    (entry,) = orjson.loads(state.get(f"{folder}/files.json"))
    assert entry["sent"] == 8 and entry["dropped"] == {} and entry["dead_lettered"] == 2
    assert report["window_totals"]["unaccounted"] == 0
