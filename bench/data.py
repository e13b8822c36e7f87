"""Generate (once) the benchmark's Currents windows with the project's own generator."""

from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from braze_currents.generator import dir_put, write_window
from braze_currents.reader import ListedObject

HOUR = datetime(2026, 12, 1, 4, tzinfo=UTC)
PREFIX = "currents"
SEED = 4
MAX_EVENTS_PER_FILE = 100_000
NULL_EXTERNAL_RATIO = 0.10
DUPLICATE_RATIO = 0.02
# A busy workspace's hour: mostly e-mail and push, some SMS, in-app, content cards and Canvas entries.
MIX = {
    "users.messages.email.Send": 0.20,
    "users.messages.email.Delivery": 0.18,
    "users.messages.email.Open": 0.14,
    "users.messages.email.Click": 0.06,
    "users.messages.pushnotification.Send": 0.14,
    "users.messages.pushnotification.Open": 0.04,
    "users.messages.sms.Delivery": 0.06,
    "users.messages.inappmessage.Impression": 0.08,
    "users.messages.contentcard.Impression": 0.04,
    "users.canvas.Entry": 0.06,
}
# Bump when the generated data changes, so cached windows are written again.
DATA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Window:
    """One generated window on disk."""

    size: int
    root: Path
    objects: list[ListedObject]
    events: int
    bytes: int

    def fetch(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        """The object as a stream, as the prepare task gets an S3 response's body."""
        return (self.root / key).open("rb")


def counts_for(size: int) -> dict[str, int]:
    """Split ``size`` events over the mix; the largest type takes the rounding remainder."""
    counts = {event_type: int(size * share) for event_type, share in MIX.items()}
    counts[next(iter(MIX))] += size - sum(counts.values())
    return counts


def _write_type(root: str, event_type: str, count: int) -> list[dict]:
    files = write_window(
        dir_put(Path(root)),
        prefix=PREFIX,
        hour=HOUR,
        event_types=[event_type],
        events_per_type={event_type: count},
        seed=SEED,
        max_events_per_file=MAX_EVENTS_PER_FILE,
        null_external_ratio=NULL_EXTERNAL_RATIO,
        duplicate_ratio=DUPLICATE_RATIO,
    )
    return [{"key": f.key, "event_type": f.event_type, "events": f.n_records, "size": f.size} for f in files]


def _manifest(size: int) -> dict:
    return {
        "version": DATA_VERSION,
        "size": size,
        "seed": SEED,
        "mix": MIX,
        "max_events_per_file": MAX_EVENTS_PER_FILE,
        "null_external_ratio": NULL_EXTERNAL_RATIO,
        "duplicate_ratio": DUPLICATE_RATIO,
    }


def load_window(root: Path) -> Window:
    """Read a generated window's manifest."""
    manifest = json.loads((root / "manifest.json").read_text())
    objects = [
        ListedObject(f["key"], f["size"], f"bench-{i}", f["event_type"])
        for i, f in enumerate(manifest["files"])
    ]
    objects.sort(key=lambda listed: (listed.event_type, listed.key))
    events = sum(f["events"] for f in manifest["files"])
    return Window(
        manifest["size"], root / "files", objects, events, sum(f["size"] for f in manifest["files"])
    )


def ensure_window(base: Path, size: int) -> tuple[Window, float]:
    """Return the window of ``size`` events under ``base``, generating it unless a matching one exists.

    :returns: the window and the seconds spent generating it (0 when it was cached).
    """
    import time

    root = base / f"window-{size}"
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in _manifest(size)} == _manifest(size):
            return load_window(root), 0.0
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    files: list[dict] = []
    # One process per core: the generator is pure Python and each type is seeded on its own.
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(_write_type, str(root / "files"), event_type, count)
            for event_type, count in counts_for(size).items()
            if count
        ]
        for future in futures:
            files.extend(future.result())
    manifest_path.write_text(json.dumps({**_manifest(size), "files": files}, indent=1))
    return load_window(root), time.perf_counter() - started
