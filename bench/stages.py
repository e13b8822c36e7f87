"""One benchmark stage, run in a process of its own so its CPU time and peak memory are its own.

``python -m bench.stages STAGE --window DIR --work DIR [--endpoint URL]`` prints one JSON line: the
events the stage handled, its wall and CPU seconds (module imports and test data loading excluded)
and the process's peak RSS. The write key comes from ``$BENCH_WRITE_KEY``; it is never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
MAPPING_FILE = ROOT / "include" / "segment_mapping.yaml"
WRITE_KEY_ENV = "BENCH_WRITE_KEY"


def _config_default(key: str) -> Any:
    from braze_currents.config import CurrentConfig

    return {field.name: field.default for field in dataclasses.fields(CurrentConfig)}[key]


# The project's defaults, as a Current without these keys gets them.
UPLOAD_CONCURRENCY: int = _config_default("upload_concurrency")
PREPARE_WORKERS: int = _config_default("prepare_workers")
FOLDER = "bench/date=2026-12-01-04"


@dataclasses.dataclass
class Measured:
    """What a stage reports."""

    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux), so a task's peak can be read alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return _peak_rss_mb()


def _timed(work: Callable[[], int]) -> Measured:
    started, cpu = time.perf_counter(), time.process_time()
    events = work()
    return Measured(events, time.perf_counter() - started, time.process_time() - cpu)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _settings(**kwargs: Any) -> Any:
    from braze_currents.catalog import field_lists
    from braze_currents.prepare import PrepareSettings

    return PrepareSettings(event_types=frozenset(field_lists()), **kwargs)


def floor(window: Any, work: Path, endpoint: str) -> Measured:
    """fastavro decode and an orjson dump of every record: the least any exporter does."""
    import fastavro

    def run() -> int:
        events = 0
        dumps = orjson.dumps
        for listed in window.objects:
            for record in fastavro.reader(io.BytesIO(window.fetch(listed.key))):
                dumps(record)
                events += 1
        return events

    return _timed(run)


def prepare(window: Any, work: Path, endpoint: str) -> Measured:
    """The project's prepare_window from object bytes to staged batch bodies, in this process."""
    import pandas  # noqa: F401  a worker has it loaded; its import is not the window's cost

    from braze_currents.mapping import load_mapping
    from braze_currents.prepare import prepare_window
    from braze_currents.storage import LocalStore

    mapping = load_mapping(MAPPING_FILE)
    staging = LocalStore(_fresh(work / "staging"))
    holder: dict[str, Any] = {}

    def run() -> int:
        result = prepare_window(
            window.objects,
            window.open,
            mapping=mapping,
            settings=_settings(),
            staging=staging,
            folder=FOLDER,
        )
        holder["result"] = result
        return result.events_read

    measured = _timed(run)
    result = holder["result"]
    chunks = [{"name": chunk.name, "events": chunk.events} for chunk in result.chunks]
    (work / "chunks.json").write_text(json.dumps(chunks))
    measured.extra = {"staged": result.staged_events, "chunks": len(chunks), "dropped": dict(result.dropped)}
    return measured


def send(window: Any, work: Path, endpoint: str) -> Measured:
    """The project's upload_chunk over the staged chunks, one after the other, default concurrency."""
    from braze_currents.segment_client import SegmentClient
    from braze_currents.storage import LocalStore
    from braze_currents.upload import upload_chunk

    chunks = json.loads((work / "chunks.json").read_text())
    staging, state = LocalStore(work / "staging"), LocalStore(_fresh(work / "send-state"))
    client = SegmentClient(
        endpoint=endpoint, write_key=os.environ[WRITE_KEY_ENV], verify=False, pool_size=UPLOAD_CONCURRENCY
    )

    def run() -> int:
        sent = 0
        for chunk in chunks:
            result = upload_chunk(
                client, staging=staging, state=state, chunk_name=chunk["name"], concurrency=UPLOAD_CONCURRENCY
            )
            sent += result.sent
        return sent

    try:
        measured = _timed(run)
    finally:
        client.close()
    measured.extra = {"requests": client.stats.requests}
    return measured


def _official_client(endpoint: str) -> Any:
    import logging

    from segment.analytics.client import Client

    # The library warns on every full queue; the count is reported instead.
    logging.getLogger("segment").setLevel(logging.ERROR)
    return Client(write_key=os.environ[WRITE_KEY_ENV], host=endpoint.removesuffix("/v1/batch"))


def _track(client: Any, calls: list[int], **message: Any) -> None:
    """Track one message; on a full queue wait for the queue to drain (the library would drop it)."""
    ok, _ = client.track(**message)
    while not ok:
        calls[0] += 1
        client.flush()
        ok, _ = client.track(**message)


def official(window: Any, work: Path, endpoint: str) -> Measured:
    """segment-analytics-python with its default settings, one track call per prepared message."""
    from braze_currents.storage import LocalStore

    staging = LocalStore(work / "staging")
    messages = []
    for chunk in json.loads((work / "chunks.json").read_text()):
        for body in staging.get(chunk["name"]).splitlines():
            document = orjson.loads(body)
            for event in document["batch"]:
                messages.append(
                    {
                        "user_id": event["userId"],
                        "event": event["event"],
                        "properties": event["properties"],
                        "context": event["context"],
                        "timestamp": datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")),
                        "message_id": event["messageId"],
                        "integrations": document.get("integrations", {}),
                    }
                )
    client = _official_client(endpoint)
    queue_full = [0]

    def run() -> int:
        for message in messages:
            _track(client, queue_full, **message)
        client.flush()
        return len(messages)

    measured = _timed(run)
    client.join()
    measured.extra = {"queue_full_waits": queue_full[0]}
    return measured


def end_to_end(window: Any, work: Path, endpoint: str) -> Measured:
    """One window through the task code: prepare, upload each chunk, summarise; each task's peak RSS.

    Prepare reads files in the project's default number of worker processes; their memory is in the
    largest worker's peak RSS here, and in the process tree's peak that ``bench.run`` samples.
    """
    import pandas  # noqa: F401

    from braze_currents.deadletters import to_ndjson
    from braze_currents.mapping import load_mapping
    from braze_currents.prepare import prepare_window
    from braze_currents.report import summarise_window
    from braze_currents.segment_client import SegmentClient
    from braze_currents.storage import LocalStore
    from braze_currents.upload import upload_chunk

    base = _fresh(work / "e2e")
    staging, state, letters = (LocalStore(base / name) for name in ("staging", "state", "dead_letters"))
    mapping = load_mapping(MAPPING_FILE)
    peaks: dict[str, float] = {}
    can_reset = _reset_peak_rss()
    holder: dict[str, Any] = {}

    def task(name: str, work: Callable[[], Any]) -> Any:
        if can_reset:
            _reset_peak_rss()
        value = work()
        peaks[name] = max(peaks.get(name, 0.0), _vm_hwm_mb())
        return value

    def prepare_task() -> dict[str, Any]:
        result = prepare_window(
            window.objects,
            window.open,
            mapping=mapping,
            settings=_settings(),
            staging=staging,
            folder=FOLDER,
            workers=PREPARE_WORKERS,
        )
        letters.put(f"{FOLDER}/prepare-dead-letters.ndjson", to_ndjson(result.dead_letters))
        chunks = [{**dataclasses.asdict(chunk), "label": chunk.label()} for chunk in result.chunks]
        counts = {
            "files": result.files,
            "files_failed": result.files_failed,
            "events_read": result.events_read,
            "dropped": dict(result.dropped),
            "dead_lettered_prepare": result.dead_lettered,
            "staged": result.staged_events,
            "chunks": len(chunks),
            "batches": sum(chunk["batches"] for chunk in chunks),
        }
        return {
            "window": "2026-12-01T04:00:00+00:00",
            "folder": FOLDER,
            "chunks": chunks,
            "counts": counts,
            "source_files": result.source_files,
        }

    def upload_task(chunk: dict[str, Any]) -> int:
        client = SegmentClient(
            endpoint=endpoint, write_key=os.environ[WRITE_KEY_ENV], verify=False, pool_size=UPLOAD_CONCURRENCY
        )
        try:
            return upload_chunk(
                client, staging=staging, state=state, chunk_name=chunk["name"], concurrency=UPLOAD_CONCURRENCY
            ).sent
        finally:
            client.close()

    def run() -> int:
        prepared = task("prepare", prepare_task)
        for chunk in prepared["chunks"]:
            task("upload", lambda chunk=chunk: upload_task(chunk))
        listing = {"objects": [dataclasses.asdict(obj) for obj in window.objects]}
        holder["report"] = task(
            "summarise",
            lambda: summarise_window(
                prepared, listing, staging=staging, state=state, dead_letters=letters, folder=FOLDER
            ),
        )
        return prepared["counts"]["events_read"]

    measured = _timed(run)
    report = holder["report"]
    measured.extra = {
        "task_peak_rss_mb": {name: round(value, 1) for name, value in peaks.items()} if can_reset else {},
        "prepare_workers": PREPARE_WORKERS,
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "sent": report["counts"]["sent"],
        "balanced": report["balanced"],
    }
    return measured


def straightforward(window: Any, work: Path, endpoint: str) -> Measured:
    """What a first script would do: fastavro records, a dict per event, the official client's track."""
    import fastavro

    from braze_currents.mapping import IDENTITY_FIELDS, load_mapping

    mapping = load_mapping(MAPPING_FILE)
    client = _official_client(endpoint)
    queue_full = [0]
    sent = [0]

    def run() -> int:
        seen: set[str] = set()
        events = 0
        for listed in window.objects:
            name = mapping.spec(listed.event_type).event
            for record in fastavro.reader(io.BytesIO(window.fetch(listed.key))):
                events += 1
                user_id = (record.get("external_user_id") or "").strip()
                if not user_id or record["id"] in seen:
                    continue
                seen.add(record["id"])
                properties = {k: v for k, v in record.items() if v is not None and k not in IDENTITY_FIELDS}
                _track(
                    client,
                    queue_full,
                    user_id=user_id,
                    event=name,
                    properties=properties,
                    timestamp=datetime.fromtimestamp(record["time"], UTC),
                    message_id=record["id"],
                    integrations={"Braze": False},
                )
                sent[0] += 1
        client.flush()
        return events

    measured = _timed(run)
    client.join()
    measured.extra = {"sent": sent[0], "queue_full_waits": queue_full[0]}
    return measured


STAGES: dict[str, Callable[[Any, Path, str], Measured]] = {
    "floor": floor,
    "prepare": prepare,
    "send": send,
    "official": official,
    "end_to_end": end_to_end,
    "straightforward": straightforward,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--window", type=Path, required=True, help="a generated window folder")
    parser.add_argument("--work", type=Path, required=True, help="where staged chunks and ledgers go")
    parser.add_argument("--endpoint", default="", help="the receiver's /v1/batch URL")
    args = parser.parse_args(argv)

    from bench.data import load_window

    window = load_window(args.window)
    measured = STAGES[args.stage](window, args.work, args.endpoint)
    measured.peak_rss_mb = _peak_rss_mb()
    print(json.dumps(dataclasses.asdict(measured)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
