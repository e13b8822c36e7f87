"""Account for a window: every event read is sent, dropped for a stated reason, or dead-lettered.

The ledger keeps, per window folder in the state location:

- ``files.json``: every source file accounted for (key, ETag, size) with its counts per outcome:
  ``read``, ``sent``, ``dropped`` by reason and ``dead_lettered``. A file listed here is not read
  again by later runs of the window, nor picked up as late by later windows.
- ``chunk-*.acks/NNNNN.json``: the messageIds Segment acknowledged, one write-once object per batch
  (see :mod:`braze_currents.upload`).

The dead-letter location holds, per window, ``dead_letters.ndjson`` (the open dead letters: a rerun
that reads a file again replaces that file's letters) and ``report.json`` (the last run's counts
and the window's totals from the ledger).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from braze_currents.deadletters import DeadLetter, from_ndjson, to_ndjson
from braze_currents.storage import Store
from braze_currents.upload import load_acks

ACKNOWLEDGED_MARK = "_acknowledged.json"


def done_files(state: Store, folder: str) -> list[dict[str, Any]]:
    """Return the source files the ledger records as fully accounted for in a window."""
    name = f"{folder}/files.json"
    return orjson.loads(state.get(name)) if state.exists(name) else []


def window_finished(state: Store, folder: str) -> bool:
    """Whether a run of the window has balanced and recorded its files in the ledger."""
    return state.exists(f"{folder}/files.json")


def open_dead_letters(dead_letters: Store, folder: str) -> list[DeadLetter]:
    """Return the dead letters of a window that no later run has cleared."""
    name = f"{folder}/dead_letters.ndjson"
    return from_ndjson(dead_letters.get(name)) if dead_letters.exists(name) else []


LATE_CLAIM_TTL = timedelta(hours=2)


def claim_late_file(state: Store, origin: str, key: str, run_id: str, *, now: datetime | None = None) -> bool:
    """Claim a late file of window ``origin`` for one run; return whether this run may send it.

    Claims are write-once objects (``late-claims/<key hash>/NNNN.json``), so of two runs listing the
    same late file at once only one sends it. A run may always go on with its own claim (a retried
    task); a claim older than :data:`LATE_CLAIM_TTL` is taken over, as its run failed or stalled, and
    what that run delivered is in the ledger already.
    """
    import hashlib

    now = now or datetime.now(UTC)
    folder = f"{origin}/late-claims/{hashlib.blake2b(key.encode(), digest_size=10).hexdigest()}/"
    claims = sorted(state.list(folder))
    number = 0
    if claims:
        last = orjson.loads(state.get(claims[-1]))
        if last["run_id"] == run_id:
            return True
        if now - datetime.fromisoformat(last["at"]) < LATE_CLAIM_TTL:
            return False
        number = int(claims[-1].rsplit("/", 1)[-1].removesuffix(".json")) + 1
    claim = {"key": key, "run_id": run_id, "at": now.isoformat(timespec="seconds")}
    return state.put_if_absent(f"{folder}{number:04d}.json", orjson.dumps(claim))


def _merge_file(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Combine a file's ledger entry with what a later run of the same file found.

    A file read again (to re-send its dead letters, or rewritten by Braze under a new ETag) counts the
    events sent before as ``already_sent``; those are folded back into ``sent``, up to what the entry
    recorded as sent, so the entry still balances on its own.
    """
    if old is None:
        return new
    merged = dict(new)
    dropped = dict(new.get("dropped", {}))
    before = int(old.get("sent", 0))
    again = min(before, dropped.get("already_sent", 0))
    if again:
        dropped["already_sent"] -= again
        if not dropped["already_sent"]:
            del dropped["already_sent"]
    merged["dropped"] = dropped
    merged["sent"] = int(new.get("sent", 0)) + again
    return merged


def _totals(files: list[dict[str, Any]]) -> dict[str, Any]:
    dropped: Counter = Counter()
    for entry in files:
        dropped.update(entry.get("dropped", {}))
    totals = {
        "files": len(files),
        "read": sum(int(entry.get("read", 0)) for entry in files),
        "sent": sum(int(entry.get("sent", 0)) for entry in files),
        "dropped": dict(sorted(dropped.items())),
        "dead_lettered": sum(int(entry.get("dead_lettered", 0)) for entry in files),
    }
    totals["unaccounted"] = totals["read"] - totals["sent"] - sum(dropped.values()) - totals["dead_lettered"]
    return totals


def _record_files(state: Store, folder: str, entries: list[dict[str, Any]], stamp: str) -> list[dict]:
    """Merge entries into a window's ``files.json``; return the window's whole list."""
    done = {entry["key"]: entry for entry in done_files(state, folder)}
    for entry in entries:
        done[entry["key"]] = {**_merge_file(done.get(entry["key"]), entry), "recorded_at": stamp}
    files = list(done.values())
    state.put(f"{folder}/files.json", orjson.dumps(files, option=orjson.OPT_INDENT_2))
    return files


def sweep_staged(staging: Store, root: str, retention: timedelta, now: datetime) -> int:
    """Delete staged chunks of windows acknowledged longer than ``retention`` ago.

    Each window's mark lists the objects it covers, so chunks a later rerun stages beside them are
    left alone.

    :param root: the Current's folder in the staging location.
    :returns: how many objects were deleted.
    """
    deleted = 0
    for name in list(staging.list(f"{root}/")):
        if not name.endswith(f"/{ACKNOWLEDGED_MARK}"):
            continue
        mark = orjson.loads(staging.get(name))
        if now - datetime.fromisoformat(mark["at"]) < retention:
            continue
        for staged in mark.get("names", []):
            staging.delete(staged)
            deleted += 1
        staging.delete(name)
    return deleted


def _staged_of_window(staging: Store, prepared: dict[str, Any], folder: str) -> list[str]:
    """Every staged object a balanced window no longer needs: its own folder, failed runs' chunks
    included, and the folders its run staged late files in."""
    names = [
        name
        for name in staging.list(f"{folder}/")
        # Late files of this window staged by later runs belong to those runs, which may be running;
        # a dry run's bodies are there for the user to read.
        if not name.endswith(f"/{ACKNOWLEDGED_MARK}")
        and "/late-" not in name[len(folder) :]
        and "/dry-run-" not in name[len(folder) :]
    ]
    for late_folder in prepared.get("late_folders", []):
        names.extend(staging.list(f"{late_folder}/"))
    return sorted(set(names))


def summarise_window(
    prepared: dict[str, Any],
    listing: dict[str, Any],
    *,
    staging: Store,
    state: Store,
    dead_letters: Store,
    folder: str,
    keep_staged: bool = False,
    retention_hours: int = 0,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Gather a window's counts from the prepare step and the ledger; write its report and dead letters.

    :param prepared: the prepare step's return value.
    :param listing: the list step's return value (for ignored keys and unknown folders).
    :param staging: where chunks were staged.
    :param state: the ledger location.
    :param dead_letters: where the window's dead letters and report are written.
    :param folder: the window's folder in each location.
    :param keep_staged: never delete staged chunks.
    :param retention_hours: keep staged chunks this long after their window is acknowledged;
        0 deletes them at once.
    :param now: the current time (for tests).
    :param dry_run: the run staged its batches without sending them: report what would have been sent,
        from ``folder`` (the dry run's own), and leave the ledger and the staged bodies alone.
    """
    now = now or datetime.now(UTC)
    stamp = now.isoformat(timespec="seconds")
    counts = dict(prepared["counts"])
    run_letters = from_ndjson(dead_letters.get(f"{folder}/prepare-dead-letters.ndjson"))
    sent = 0
    incomplete = []
    for chunk in prepared["chunks"]:
        acks = load_acks(state, chunk["name"])
        sent += acks.sent
        run_letters.extend(acks.dead_letters)
        if len(acks.acked) != chunk["batches"]:
            incomplete.append(chunk["chunk_id"])

    event_letters = sum(1 for letter in run_letters if letter.id is not None)
    dropped = sum(counts["dropped"].values())
    if dry_run:
        would_send = counts["staged"]
        report = {
            "window": prepared["window"],
            "run_id": prepared.get("run_id"),
            "dry_run": True,
            "finished_at": stamp,
            "would_send": would_send,
            "counts": {**counts, "sent": 0, "dead_lettered": event_letters},
            "balance": {
                "read": counts["events_read"],
                "would_send": would_send,
                "dropped": dropped,
                "dead_lettered": event_letters,
                "unaccounted": counts["events_read"] - would_send - dropped - event_letters,
            },
            "request_bodies": [chunk["name"] for chunk in prepared["chunks"]],
            "files": prepared.get("source_files", []),
            "dead_letters": len(run_letters),
        }
        report["balanced"] = report["balance"]["unaccounted"] == 0
        dead_letters.put(f"{folder}/dead_letters.ndjson", to_ndjson(run_letters))
        dead_letters.put(f"{folder}/report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))
        return report
    counts.update(
        sent=sent,
        dead_lettered=event_letters,
        ignored_keys=listing.get("ignored_keys", 0),
        unknown_event_types=listing.get("unknown_event_types", {}),
    )
    balance = {
        "read": counts["events_read"],
        "sent": sent,
        "dropped": dropped,
        "dead_lettered": event_letters,
        "unaccounted": counts["events_read"] - sent - dropped - event_letters,
    }

    # A file read again in this run replaces its earlier dead letters with this run's.
    sources = [dict(entry) for entry in prepared.get("source_files", [])]
    reread = {entry["key"] for entry in sources}
    letters = [letter for letter in open_dead_letters(dead_letters, folder) if letter.key not in reread]
    letters.extend(run_letters)

    rejected = Counter(letter.key for letter in run_letters if letter.reason == "rejected_by_segment")
    for entry in sources:
        staged = int(entry.pop("staged", 0))
        entry["sent"] = staged - rejected[entry["key"]]
        entry["dead_lettered"] = int(entry.get("dead_lettered", 0)) + rejected[entry["key"]]

    report: dict[str, Any] = {
        "window": prepared["window"],
        "run_id": prepared.get("run_id"),
        "finished_at": stamp,
        "counts": counts,
        "balance": balance,
        "balanced": balance["unaccounted"] == 0 and not incomplete,
        "incomplete_chunks": incomplete,
        "dead_letters": len(run_letters),
        "open_dead_letters": len(letters),
        "late_files": [entry for entry in sources if entry.get("late_from")],
        "files": sources,
    }
    if report["balanced"]:
        own = [entry for entry in sources if not entry.get("late_from")]
        files = _record_files(state, folder, own, stamp)
        late_by_folder: dict[str, list[dict[str, Any]]] = {}
        for entry in report["late_files"]:
            late_by_folder.setdefault(entry["origin_folder"], []).append(
                {**entry, "late_in": prepared["window"]}
            )
        for origin, entries in late_by_folder.items():
            _record_files(state, origin, entries, stamp)
            # The late file's earlier dead letters (say, truncated before Braze rewrote it) are settled
            # by this run; what still fails is on record in this window's own dead letters.
            keys = {entry["key"] for entry in entries}
            if dead_letters.exists(f"{origin}/dead_letters.ndjson"):
                kept = [
                    letter for letter in open_dead_letters(dead_letters, origin) if letter.key not in keys
                ]
                dead_letters.put(f"{origin}/dead_letters.ndjson", to_ndjson(kept))
        report["window_totals"] = _totals(files)
        if not keep_staged:
            staged = _staged_of_window(staging, prepared, folder)
            if retention_hours <= 0:
                for name in staged:
                    staging.delete(name)
            else:
                mark = {"at": stamp, "names": staged}
                staging.put(f"{folder}/{ACKNOWLEDGED_MARK}", orjson.dumps(mark))
                root = folder.split("/", 1)[0]
                report["staged_swept"] = sweep_staged(staging, root, timedelta(hours=retention_hours), now)
    dead_letters.put(f"{folder}/dead_letters.ndjson", to_ndjson(letters))
    dead_letters.put(f"{folder}/report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report
