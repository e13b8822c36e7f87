"""Profile ``prepare_window`` with pyinstrument and report the share of time of each step.

Run ``python -m bench.profile_prepare --size 100000`` (after ``make bench`` has generated that window).
Each sample is credited to the innermost frame that belongs to a step, so pandas called from the
filter counts as filtering and ``time.strftime`` called from the mapping counts as mapping. polars
takes its caller's step: decoding for blocks.py, mapping for columnar.py (which serialises too, so
its orjson share is only the batches that go event by event).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

STEPS = (
    "decode (polars, fastavro)",
    "filter (pandas)",
    "map (build message)",
    "serialise (orjson)",
    "batch and chunk bookkeeping",
    "write staged chunks",
    "loop and counting",
)


def _step(frame: Any) -> str | None:
    path = (frame.file_path or "").replace("\\", "/")
    function = frame.function or ""
    if "/polars/" in path:
        return None  # polars decodes for blocks.py and serialises for columnar.py: its caller's step
    if "/fastavro/" in path or path.endswith(("braze_currents/reader.py", "braze_currents/blocks.py")):
        return STEPS[0]
    if path.endswith("braze_currents/columnar.py"):
        return STEPS[2]
    if any(part in path for part in ("/pandas/", "/numpy/", "/pyarrow/")) or path.endswith("filtering.py"):
        return STEPS[1]
    if function == "_frame_filter":
        return STEPS[1]
    if path.endswith("braze_currents/mapping.py"):
        return STEPS[2]
    if function == "dumps":
        return STEPS[3]
    if path.endswith("braze_currents/batching.py") or "_ChunkWriter" in function:
        return STEPS[4]
    if path.endswith("braze_currents/storage.py"):
        return STEPS[5]
    if function == "prepare_window":
        return STEPS[6]
    return None


def shares(root_frame: Any) -> dict[str, float]:
    """Return seconds per step under ``prepare_window``, crediting each frame's own time."""
    seconds = dict.fromkeys(STEPS, 0.0)

    def walk(frame: Any, current: str | None) -> None:
        step = _step(frame) or current
        own = frame.time - sum(child.time for child in frame.children)
        if step is not None:
            seconds[step] += max(own, 0.0)
        for child in frame.children:
            walk(child, step)

    walk(root_frame, None)
    return seconds


def profile(size: int, data_dir: Path) -> dict[str, Any]:
    """Profile one prepare of the generated window of ``size`` events."""
    import pandas  # noqa: F401  imported up front: a worker pays it once, not per window
    from pyinstrument import Profiler

    from bench.data import load_window
    from braze_currents.catalog import field_lists
    from braze_currents.mapping import load_mapping
    from braze_currents.prepare import PrepareSettings, prepare_window
    from braze_currents.storage import LocalStore

    window = load_window(data_dir / f"window-{size}")
    mapping = load_mapping(Path(__file__).resolve().parents[1] / "include" / "segment_mapping.yaml")
    settings = PrepareSettings(event_types=frozenset(field_lists()))
    staging = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    profiler = Profiler(interval=0.001)
    try:
        profiler.start()
        prepare_window(
            window.objects,
            window.fetch,
            mapping=mapping,
            settings=settings,
            staging=LocalStore(staging),
            folder="w",
        )
        profiler.stop()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    root = profiler.last_session.root_frame()
    seconds = shares(root)
    total = sum(seconds.values()) or 1.0
    return {
        "size": size,
        "seconds": {step: round(value, 3) for step, value in seconds.items()},
        "share": {step: round(value / total, 3) for step, value in seconds.items()},
        "text": profiler.output_text(unicode=False, color=False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_prepare", description=__doc__)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=Path("var/bench/data"))
    parser.add_argument("--json", type=Path, help="also write the shares to this file")
    parser.add_argument("--tree", action="store_true", help="print pyinstrument's call tree too")
    args = parser.parse_args(argv)
    result = profile(args.size, args.data)
    if args.tree:
        print(result["text"])
    for step in STEPS:
        print(f"{step:32} {result['seconds'][step]:8.2f} s  {result['share'][step]:6.1%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "text"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
