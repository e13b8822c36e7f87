"""The batch-at-a-time pieces of the prepare path agree with the event-at-a-time rules they replace."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest

from braze_currents.batching import BatchBuilder
from braze_currents.filtering import (
    ALREADY_SENT,
    DUPLICATE,
    MISSING_ID,
    NO_EXTERNAL_ID,
    SEND,
    SeenIds,
    select_rows,
)
from braze_currents.generator import avro_schema, encode_avro, generate_records
from braze_currents.reader import RecordBatches, decode

HOUR = datetime(2026, 12, 1, 4, tzinfo=UTC)


def loop_outcomes(batches: list[list[dict]], already_sent: set[str], prefix: str) -> list[list[int]]:
    """The rules as a plain loop over events, as prepare applied them before pandas."""
    seen: set[str] = set()
    out = []
    for records in batches:
        outcomes = []
        for record in records:
            event_id, external = record.get("id"), record.get("external_user_id")
            if not isinstance(event_id, str) or not event_id:
                outcomes.append(MISSING_ID)
            elif external is None or not external.strip().strip("\u200b\u200c\u200d\u2060\ufeff"):
                outcomes.append(NO_EXTERNAL_ID)
            elif event_id in seen:
                outcomes.append(DUPLICATE)
            else:
                seen.add(event_id)
                outcomes.append(ALREADY_SENT if prefix + event_id in already_sent else SEND)
        out.append(outcomes)
    return out


def test_seen_ids_agree_with_a_set_over_many_batches() -> None:
    rng = random.Random(5)
    pool = [f"{rng.getrandbits(64):x}-{i}" for i in range(20_000)]
    seen, reference = SeenIds(), set()
    for _ in range(60):
        batch = list(dict.fromkeys(rng.choice(pool) for _ in range(1500)))
        before = seen.add(np.array(batch, dtype=object))
        assert before.tolist() == [event_id in reference for event_id in batch]
        reference.update(batch)
    assert len(seen) == len(reference)


@pytest.mark.parametrize(("prefix", "delivered_every"), [("", 0), ("p-", 5)])
def test_select_rows_gives_each_row_the_outcome_of_the_event_by_event_rules(
    prefix: str, delivered_every: int
) -> None:
    rng = random.Random(9)
    records = generate_records(
        "users.messages.email.Send", 3000, hour=HOUR, rng=rng, null_external_ratio=0.2, duplicate_ratio=0.1
    )
    records[10]["id"] = ""
    records[11]["id"] = None
    records[12]["external_user_id"] = "   "
    records[13]["external_user_id"] = ""
    records[14]["external_user_id"] = "\u200b \ufeff"  # prints as nothing: no external id either
    batches = [records[i : i + 700] for i in range(0, len(records), 700)]
    already_sent = {prefix + r["id"] for r in records[::delivered_every]} if delivered_every else set()

    seen = SeenIds()
    got = [
        select_rows(batch, seen, already_sent=already_sent, message_id_prefix=prefix).outcome.tolist()
        for batch in batches
    ]
    assert got == loop_outcomes(batches, already_sent, prefix)
    assert {DUPLICATE, NO_EXTERNAL_ID, MISSING_ID} <= {o for batch in got for o in batch}


def test_user_ids_are_stripped_strings_where_sent() -> None:
    records = [
        {"id": "a", "external_user_id": "  cust-1 "},
        {"id": "b", "external_user_id": None},
        {"id": "c", "external_user_id": "0042"},
    ]
    selection = select_rows(records, SeenIds())
    assert selection.rows(SEND) == [0, 2]
    assert [selection.user_ids[row] for row in selection.rows(SEND)] == ["cust-1", "0042"]


def test_batch_builder_extend_cuts_the_same_bodies_as_add_one_by_one() -> None:
    rng = random.Random(2)
    events = [b'{"x":"' + b"y" * rng.randrange(10, 30_000) + b'"}' for _ in range(400)]
    one_by_one = BatchBuilder(integrations={"Braze": False}, max_events=37)
    expected = [body for event in events for body in one_by_one.add(event)] + [one_by_one.flush()]
    at_once = BatchBuilder(integrations={"Braze": False}, max_events=37)
    got = at_once.extend(events[:150]) + at_once.extend(events[150:]) + [at_once.flush()]
    assert got == expected
    assert all(len(body) <= 475_000 for body in got)


def test_record_batches_cut_a_file_into_fixed_batches_and_report_a_truncation() -> None:
    records = generate_records("users.canvas.Entry", 2500, hour=HOUR, rng=random.Random(4))
    data = encode_avro(records, avro_schema("users.canvas.Entry"), block_size=200)
    batches = RecordBatches(data, "k", batch_size=1000)
    assert [len(batch) for batch in batches] == [1000, 1000, 500]
    assert batches.error is None

    cut = data[: len(data) // 2]
    truncated = RecordBatches(cut, "k", batch_size=1000)
    got = [record for batch in truncated for record in batch]
    assert truncated.error is not None and truncated.error.startswith(f"stopped after {len(got)} records")
    assert got == decode(cut, "k").records
    assert 0 < len(got) < 2500
