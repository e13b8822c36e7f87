"""Account for a window: every event read is sent, dropped for a stated reason, or dead-lettered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from braze_currents.deadletters import from_ndjson, to_ndjson
from braze_currents.storage import Store
from braze_currents.upload import load_acks


def done_files(state: Store, folder: str) -> list[dict[str, Any]]:
    """Return the source files the ledger records as fully accounted for in a window."""
    name = f"{folder}/files.json"
    return orjson.loads(state.get(name)) if state.exists(name) else []


def summarise_window(
    prepared: dict[str, Any],
    listing: dict[str, Any],
    *,
    staging: Store,
    state: Store,
    dead_letters: Store,
    folder: str,
    keep_staged: bool = False,
) -> dict[str, Any]:
    """Gather a window's counts from the prepare step and the ledger; write its report and dead letters.

    :param prepared: the prepare step's return value.
    :param listing: the list step's return value (for ignored keys and unknown folders).
    :param staging: where chunks were staged; they are deleted once acknowledged unless ``keep_staged``.
    :param state: the ledger location.
    :param dead_letters: where the window's dead letters and report are written.
    :param folder: the window's folder in each location.
    """
    counts = dict(prepared["counts"])
    letters = from_ndjson(dead_letters.get(f"{folder}/prepare-dead-letters.ndjson"))
    sent = 0
    incomplete = []
    for chunk in prepared["chunks"]:
        acks = load_acks(state, chunk["name"])
        sent += acks.sent
        letters.extend(acks.dead_letters)
        if len(acks.acked) != chunk["batches"]:
            incomplete.append(chunk["chunk_id"])

    event_letters = sum(1 for letter in letters if letter.id is not None)
    dropped = sum(counts["dropped"].values())
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
    report = {
        "window": prepared["window"],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": counts,
        "balance": balance,
        "balanced": balance["unaccounted"] == 0 and not incomplete,
        "incomplete_chunks": incomplete,
        "dead_letters": len(letters),
        "files": prepared.get("source_files", []),
    }
    dead_letters.put(f"{folder}/dead_letters.ndjson", to_ndjson(letters))
    dead_letters.put(f"{folder}/report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if report["balanced"]:
        done = {entry["key"]: entry for entry in done_files(state, folder)}
        done.update((entry["key"], entry) for entry in report["files"])
        state.put(f"{folder}/files.json", orjson.dumps(list(done.values()), option=orjson.OPT_INDENT_2))
        if not keep_staged:
            for chunk in prepared["chunks"]:
                staging.delete(chunk["name"])
                staging.delete(chunk["name"].removesuffix(".ndjson") + ".sources.json")
    return report
