"""Upload one staged chunk to Segment, resuming after the batches the ledger already holds."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import orjson

from braze_currents.batching import message_ids, split_body
from braze_currents.deadletters import DeadLetter
from braze_currents.segment_client import SegmentClient, SegmentRejectedError
from braze_currents.storage import Store

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ChunkAcks:
    """What the ledger records of one chunk: acknowledged batches and per-outcome counts."""

    acked: set[int] = dataclasses.field(default_factory=set)
    sent: int = 0
    dead_letters: list[DeadLetter] = dataclasses.field(default_factory=list)

    def to_json(self) -> bytes:
        letters = [dataclasses.asdict(letter) for letter in self.dead_letters]
        return orjson.dumps({"acked": sorted(self.acked), "sent": self.sent, "dead_letters": letters})

    @classmethod
    def from_json(cls, data: bytes) -> ChunkAcks:
        doc = orjson.loads(data)
        return cls(set(doc["acked"]), doc["sent"], [DeadLetter(**d) for d in doc["dead_letters"]])


def acks_name(chunk_name: str) -> str:
    """Return the ledger object that records a chunk's acknowledged batches."""
    return chunk_name.removesuffix(".ndjson") + ".acks.json"


def load_acks(state: Store, chunk_name: str) -> ChunkAcks:
    """Read a chunk's acknowledgements from the ledger (empty when it was never uploaded)."""
    name = acks_name(chunk_name)
    return ChunkAcks.from_json(state.get(name)) if state.exists(name) else ChunkAcks()


@dataclasses.dataclass
class UploadResult:
    """Outcome of one chunk upload."""

    batches: int
    skipped_batches: int
    sent: int
    dead_letters: list[DeadLetter]
    requests: int


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
) -> UploadResult:
    """Send the batches of one staged chunk that the ledger does not hold yet.

    Each acknowledged batch is written to the ledger before the next result is taken, so a task that
    dies mid-upload resumes after the last acknowledged batch. A batch Segment refuses (400/413) is
    split in halves until the refused event is alone; that event becomes a dead letter.

    :param client: the Segment client.
    :param staging: where the chunk was staged.
    :param state: where the ledger lives.
    :param chunk_name: the chunk's object name in ``staging``.
    :param concurrency: batches in flight at once.
    :param before_batch: called with each batch index before it is sent (a hook for rate limits).
    """
    bodies = staging.get(chunk_name).splitlines()
    acks = load_acks(state, chunk_name)
    pending = [index for index in range(len(bodies)) if index not in acks.acked]
    sources = _sources(staging, chunk_name)
    lock = threading.Lock()
    requests_before = client.stats.requests

    def offset_of(index: int) -> int:
        return sum(len(message_ids(bodies[i])) for i in range(index))

    def send_isolating(body: bytes, first_event: int) -> tuple[int, list[DeadLetter]]:
        try:
            client.send(body)
            return len(message_ids(body)), []
        except SegmentRejectedError as exc:
            halves = split_body(body)
            if halves is None:
                event_id = message_ids(body)[0]
                doc = sources()
                file_index, row = doc["events"][first_event]
                letter = DeadLetter(
                    "rejected_by_segment", doc["files"][file_index], None, event_id, row, exc.detail[:200]
                )
                return 0, [letter]
            size = len(message_ids(halves[0]))
            sent_a, letters_a = send_isolating(halves[0], first_event)
            sent_b, letters_b = send_isolating(halves[1], first_event + size)
            return sent_a + sent_b, letters_a + letters_b

    def run(index: int) -> None:
        if before_batch is not None:
            before_batch(index)
        try:
            client.send(bodies[index])
            sent, letters = len(message_ids(bodies[index])), []
        except SegmentRejectedError:
            log.warning(
                "Segment refused batch %s of %s; splitting it to find the refused events", index, chunk_name
            )
            sent, letters = send_isolating(bodies[index], offset_of(index))
        with lock:
            acks.acked.add(index)
            acks.sent += sent
            acks.dead_letters.extend(letters)
            state.put(acks_name(chunk_name), acks.to_json())

    if pending:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(run, index) for index in pending]
            _, not_done = wait(futures, return_when=FIRST_EXCEPTION)
            for future in not_done:
                future.cancel()
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    raise future.exception()

    return UploadResult(
        batches=len(bodies),
        skipped_batches=len(bodies) - len(pending),
        sent=acks.sent,
        dead_letters=acks.dead_letters,
        requests=client.stats.requests - requests_before,
    )
