"""Upload one staged chunk to Segment, resuming after the batches the ledger already holds."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import orjson

from braze_currents.batching import message_ids, split_body
from braze_currents.deadletters import DeadLetter
from braze_currents.segment_client import SegmentClient, SegmentRejectedError
from braze_currents.storage import Store
from braze_currents.throttle import RateLimiter

log = logging.getLogger(__name__)

# Most events of one batch isolated one by one after Segment refuses it (400/413); beyond that the
# batch as a whole is refused, and its remaining events become dead letters without more requests.
MAX_ISOLATED = 10


@dataclasses.dataclass
class ChunkAcks:
    """What the ledger records of one chunk: acknowledged batches, events sent and dead letters."""

    acked: set[int] = dataclasses.field(default_factory=set)
    sent: int = 0
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)


def acks_prefix(chunk_name: str) -> str:
    """Return the ledger folder of a chunk: one write-once object per acknowledged batch."""
    return chunk_name.removesuffix(".ndjson") + ".acks/"


def _ack_index(name: str) -> int:
    return int(name.rsplit("/", 1)[-1].removesuffix(".json"))


def acked_batches(state: Store, chunk_name: str) -> set[int]:
    """Return the indexes of a chunk's batches that Segment acknowledged."""
    return {_ack_index(name) for name in state.list(acks_prefix(chunk_name)) if name.endswith(".json")}


def load_acks(state: Store, chunk_name: str) -> ChunkAcks:
    """Read everything the ledger holds for a chunk (empty when it was never uploaded)."""
    acks = ChunkAcks()
    for name in state.list(acks_prefix(chunk_name)):
        if not name.endswith(".json"):
            continue
        doc = orjson.loads(state.get(name))
        acks.acked.add(_ack_index(name))
        acks.sent += len(doc["ids"])
        acks.dead_letters.extend(DeadLetter(**letter) for letter in doc["dead_letters"])
    return acks


def sent_ids(state: Store, folder: str) -> set[str]:
    """Return every messageId the ledger records as acknowledged under a window's folder."""
    ids: set[str] = set()
    for name in state.list(folder):
        if ".acks/" in name and name.endswith(".json"):
            ids.update(orjson.loads(state.get(name))["ids"])
    return ids


@dataclasses.dataclass
class UploadResult:
    """Outcome of one chunk upload."""

    batches: int
    skipped_batches: int
    sent: int
    dead_letters: list[DeadLetter]
    requests: int


def _batch_ids(staging: Store, chunk_name: str, bodies: list[bytes]) -> Callable[[int], list[str]]:
    """Return a batch's messageIds by index: from the list prepare staged beside the chunk when there
    is one for every body, else parsed from the body (a chunk staged by an older version)."""
    name = chunk_name.removesuffix(".ndjson") + ".message-ids.jsonl"
    lines = staging.get(name).splitlines() if staging.exists(name) else []
    if len(lines) != len(bodies):
        return lambda index: message_ids(bodies[index])
    return lambda index: orjson.loads(lines[index])


def _sources(staging: Store, chunk_name: str) -> Callable[[], dict]:
    cache: dict = {}

    def load() -> dict:
        if not cache:
            cache.update(orjson.loads(staging.get(chunk_name.removesuffix(".ndjson") + ".sources.json")))
        return cache

    return load


def upload_chunk(
    client: SegmentClient,
    *,
    staging: Store,
    state: Store,
    chunk_name: str,
    concurrency: int = 4,
    before_batch: Callable[[int], None] | None = None,
    limiter: RateLimiter | None = None,
) -> UploadResult:
    """Send the batches of one staged chunk that the ledger does not hold yet.

    Each acknowledged batch is written to the ledger as its own write-once object holding the
    messageIds Segment took, so a task that dies mid-upload resumes after the acknowledged batches,
    and later runs of the window know exactly which events were delivered. A batch Segment refuses
    (400/413) is split in halves until the refused event is alone; that event becomes a dead letter.

    :param client: the Segment client.
    :param staging: where the chunk was staged.
    :param state: where the ledger lives.
    :param chunk_name: the chunk's object name in ``staging``.
    :param concurrency: batches in flight at once.
    :param before_batch: called with each batch index before it is sent.
    :param limiter: the Current's rate cap; every request (split halves included) waits for its turn.
    """
    bodies = staging.get(chunk_name).splitlines()
    done = acked_batches(state, chunk_name)
    pending = [index for index in range(len(bodies)) if index not in done]
    ids_of = _batch_ids(staging, chunk_name, bodies)
    sources = _sources(staging, chunk_name)
    requests_before = client.stats.requests

    def offset_of(index: int) -> int:
        return sum(len(ids_of(i)) for i in range(index))

    def refused(body: bytes, first_event: int, detail: str) -> list[DeadLetter]:
        doc = sources()
        letters = []
        for offset, event_id in enumerate(message_ids(body)):
            file_index, row = doc["events"][first_event + offset]
            letters.append(
                DeadLetter("rejected_by_segment", doc["files"][file_index], None, event_id, row, detail[:200])
            )
        return letters

    def send_isolating(
        body: bytes, first_event: int, budget: list[int]
    ) -> tuple[list[str], list[DeadLetter]]:
        if budget[0] <= 0:
            # Segment refuses event after event: something is wrong with the whole batch, not one event.
            # Splitting further would cost two requests per event; the rest are dead letters instead.
            return [], refused(body, first_event, f"not sent: Segment refused over {MAX_ISOLATED} events")
        try:
            ids = message_ids(body)
            if limiter is not None:
                limiter.acquire(len(ids))
            client.send(body)
            return ids, []
        except SegmentRejectedError as exc:
            halves = split_body(body)
            if halves is None:
                budget[0] -= 1
                return [], refused(body, first_event, exc.detail)
            size = len(message_ids(halves[0]))
            sent_a, letters_a = send_isolating(halves[0], first_event, budget)
            sent_b, letters_b = send_isolating(halves[1], first_event + size, budget)
            return sent_a + sent_b, letters_a + letters_b

    def run(index: int) -> None:
        if before_batch is not None:
            before_batch(index)
        ids = ids_of(index)
        if limiter is not None:
            limiter.acquire(len(ids))
        try:
            client.send(bodies[index])
            sent, letters = ids, []
        except SegmentRejectedError:
            log.warning(
                "Segment refused batch %s of %s; splitting it to isolate the event", index, chunk_name
            )
            sent, letters = send_isolating(bodies[index], offset_of(index), [MAX_ISOLATED])
        record = {"ids": sent, "dead_letters": [dataclasses.asdict(letter) for letter in letters]}
        state.put(f"{acks_prefix(chunk_name)}{index:05d}.json", orjson.dumps(record))

    if pending:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(run, index) for index in pending]
            _, not_done = wait(futures, return_when=FIRST_EXCEPTION)
            for future in not_done:
                future.cancel()
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    raise future.exception()

    acks = load_acks(state, chunk_name)
    return UploadResult(
        batches=len(bodies),
        skipped_batches=len(bodies) - len(pending),
        sent=acks.sent,
        dead_letters=acks.dead_letters,
        requests=client.stats.requests - requests_before,
    )
