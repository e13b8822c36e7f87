"""``make bench``: the exporter's throughput, CPU time and memory against simple baselines.

For each window size (10k, 100k and 1M events of realistic Currents files; ``BENCH_SIZES`` or
``--sizes`` picks fewer) it runs, each in a process of its own:

- Floor: fastavro decode plus an orjson dump of every record, the least any exporter does;
- Prepare: the project's ``prepare_window`` from object bytes to staged batch bodies, in one process;
- Send: the project's ``upload_chunk`` over those chunks, vs Official send: segment-analytics-python
  with default settings, one ``track`` per message, to the same receiver;
- End to end: prepare (with the default ``prepare_workers``), upload each chunk and summarise, as the
  DAG's tasks do, vs Straightforward: fastavro records, a dict per event and the official client's
  ``track``.

The Segment stand-in is the project's receiver, run as ``--receivers`` processes sharing one port so it
does not cap the senders; each checks and counts every event but stores none. Every stage's events
are checked against what the receivers accepted. While a stage runs, its process tree's proportional
set size (PSS: pages shared by a forked worker and its parent counted once) is sampled every 50 ms
from outside; before each stage the page cache is written back (``sync``), so that the staged
chunks one stage wrote are not flushed to disk while the next is timed. The table,
bench/results/latest.json and bench/results/latest.png come out at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "var" / "bench" / "data"
WORK_DIR = ROOT / "var" / "bench" / "work"
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_SIZES = "10k,100k,1M"
STAGES = ("floor", "prepare", "send", "official", "end_to_end", "straightforward")
LABELS = {
    "floor": "Floor (decode + dump)",
    "prepare": "Prepare",
    "send": "Send",
    "official": "Official send",
    "end_to_end": "End to end",
    "straightforward": "Straightforward",
}
# Stages whose events must all reach the receiver, and what each should deliver.
SENDING = ("send", "official", "end_to_end", "straightforward")
# glibc's dynamic mmap threshold lets big freed buffers push later allocations below their size onto
# the heap, where they fragment; a fixed threshold trades some time for memory (README, Performance).
# Stages run with glibc's defaults, as Airflow workers do, unless --mmap-threshold is given.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def parse_sizes(text: str) -> list[int]:
    """Parse ``10k,100k,1M`` into event counts."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        factor = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        sizes.append(int(float(part.rstrip("km")) * factor))
    return sizes


def label(size: int) -> str:
    return f"{size // 1_000_000}M" if size % 1_000_000 == 0 else f"{size // 1_000}k"


class Receivers:
    """Receiver processes sharing one loopback port; their counts are summed when they stop."""

    def __init__(self, work: Path, write_key: str, count: int) -> None:
        self.work, self.write_key, self.count = work, write_key, count
        self.processes: list[subprocess.Popen] = []
        self.endpoint = ""

    def __enter__(self) -> Receivers:
        env = {**os.environ, "BENCH_WRITE_KEY": self.write_key}
        port = 0
        for index in range(self.count):
            # Each receiver checks every request and event against Segment's limits and counts what it
            # accepts (repeats included), but stores nothing: a gigabyte of accepted events written to
            # disk per million would be the stand-in's cost, not the sender's, on the same two cores.
            out = os.devnull
            command = [
                sys.executable,
                "-m",
                "braze_currents.receiver",
                "--port",
                str(port),
                "--reuse-port",
                "--out",
                str(out),
                "--write-key-env",
                "BENCH_WRITE_KEY",
                "--stats-out",
                str(self.work / f"receiver-{index}.stats.json"),
            ]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
            self.processes.append(process)
            line = process.stdout.readline().strip()
            if not line.startswith("listening on "):
                raise RuntimeError(f"receiver {index} did not start: {line!r}")
            url = line.removeprefix("listening on ")
            port = int(url.rsplit(":", 1)[1])
            self.endpoint = url + "/v1/batch"
        return self

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for process in self.processes:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def stop(self) -> dict[str, Any]:
        totals: dict[str, Any] = {
            "requests": 0,
            "accepted": 0,
            "duplicates": 0,
            "rejected": {},
            "statuses": {},
        }
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for index, process in enumerate(self.processes):
            process.wait(timeout=60)
            stats = json.loads((self.work / f"receiver-{index}.stats.json").read_text())
            for key in ("requests", "accepted", "duplicates"):
                totals[key] += stats[key]
            for reason, count in stats["rejected"].items():
                totals["rejected"][reason] = totals["rejected"].get(reason, 0) + count
            for status, count in stats["status_counts"].items():
                totals["statuses"][status] = totals["statuses"].get(status, 0) + count
        self.processes = []
        return totals

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def _process_tree(pid: int) -> list[int]:
    """The process and its descendants (Linux), as far as they can be read right now."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            for task in Path(f"/proc/{pids[index]}/task").iterdir():
                pids.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
        index += 1
    return pids


def _tree_pss_mb(pid: int) -> float:
    """The proportional set size of a process tree: shared pages split between their sharers, so a
    forked worker's untouched copy of its parent is not counted twice."""
    total = 0
    for member in _process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


def run_stage(stage: str, window_dir: Path, work: Path, endpoint: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one stage in its own process; sample its process tree's memory while it runs."""
    command = [sys.executable, "-m", "bench.stages", stage, "--window", str(window_dir), "--work", str(work)]
    if endpoint:
        command += ["--endpoint", endpoint]
    errors = work / f"{stage}.stderr"
    peak = 0.0
    # The last stage's writes (Prepare stages 0.7 GB at 1M) go to disk now, not during this stage.
    os.sync()
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        # A sample every 50 ms, taken from outside the stage so it costs the stage nothing.
        while process.poll() is None:
            peak = max(peak, _tree_pss_mb(process.pid))
            time.sleep(0.05)
        output = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{errors.read_text()[-3000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    result["tree_peak_pss_mb"] = round(peak, 1)
    return result


def measure_size(size: int, receivers: int, env: dict[str, str]) -> dict[str, Any]:
    from bench.data import ensure_window

    window, generated = ensure_window(DATA_DIR, size)
    if generated:
        print(f"  generated {window.events:,} events in {len(window.objects)} files ({generated:.0f} s)")
    work = WORK_DIR / label(size)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_key = secrets.token_urlsafe(24)
    stage_env = {**env, "BENCH_WRITE_KEY": write_key}
    results: dict[str, Any] = {}
    for stage in STAGES:
        if stage in SENDING:
            with Receivers(work, write_key, receivers) as running:
                cpu_before = running.cpu_seconds()
                result = run_stage(stage, window.root.parent, work, running.endpoint, stage_env)
                result["receiver_cpu_seconds"] = round(running.cpu_seconds() - cpu_before, 2)
                result["receiver"] = running.stop()
        else:
            result = run_stage(stage, window.root.parent, work, "", stage_env)
        result["events_per_second"] = result["events"] / result["seconds"] if result["seconds"] else 0.0
        results[stage] = result
        print(
            f"  {LABELS[stage]:22} {result['events']:>9,} events {result['seconds']:7.2f} s "
            f"{result['events_per_second']:>10,.0f} ev/s  cpu {result['cpu_seconds']:6.2f} s  "
            f"rss {result['peak_rss_mb']:5.0f} MB  tree {result['tree_peak_pss_mb']:5.0f} MB",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    staged = results["prepare"]["extra"]["staged"]
    problems = []
    for stage in SENDING:
        accepted = results[stage]["receiver"]["accepted"]
        if accepted != staged:
            problems.append(f"{stage}: the receivers accepted {accepted:,} events, expected {staged:,}")
        if results[stage]["receiver"]["rejected"]:
            problems.append(f"{stage}: the receivers rejected {results[stage]['receiver']['rejected']}")
    return {
        "size": size,
        "files": len(window.objects),
        "bytes": window.bytes,
        "stages": results,
        "staged": staged,
        "problems": problems,
    }


def ratios(by_size: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, run in by_size.items():
        rate = {stage: value["events_per_second"] for stage, value in run["stages"].items()}
        out[name] = {
            "prepare_vs_floor": rate["prepare"] / rate["floor"],
            "send_vs_official": rate["send"] / rate["official"],
            "end_to_end_vs_straightforward": rate["end_to_end"] / rate["straightforward"],
        }
    return out


def targets(by_size: dict[str, dict[str, Any]], ratio: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Check the issue's targets on whatever sizes ran; a target needing a missing size is skipped."""
    checks = []

    def check(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        checks.append({"target": name, "value": value, "goal": goal, "met": ok})

    if "1M" in ratio:
        value = ratio["1M"]["prepare_vs_floor"]
        check("Prepare / Floor events/s at 1M", round(value, 2), ">= 0.50", value >= 0.5)
    for name in ratio:
        value = ratio[name]["send_vs_official"]
        check(f"Send / Official send events/s at {name}", round(value, 1), ">= 5", value >= 5)
    for name in ("100k", "1M"):
        if name in ratio:
            value = ratio[name]["end_to_end_vs_straightforward"]
            check(f"End to end / Straightforward at {name}", round(value, 1), ">= 3", value >= 3)
    if "1M" in by_size:
        stages = by_size["1M"]["stages"]
        task_peaks = stages["end_to_end"]["extra"].get("task_peak_rss_mb") or {}
        peak = max([stages["prepare"]["peak_rss_mb"], *task_peaks.values()])
        check("peak RSS of any task process at 1M (MB)", round(peak), "< 400", peak < 400)
        # Prepare's worker processes belong to its task: the whole tree, shared pages counted once.
        tree = stages["end_to_end"].get("tree_peak_pss_mb", 0.0)
        check("End to end process tree peak PSS at 1M (MB)", round(tree), "< 400", tree < 400)
        if "100k" in by_size:
            small = by_size["100k"]["stages"]
            growth = stages["prepare"]["peak_rss_mb"] / small["prepare"]["peak_rss_mb"] - 1
            check("Prepare peak RSS growth 100k -> 1M", round(growth, 2), "< 0.30", growth < 0.3)
            if small["end_to_end"].get("tree_peak_pss_mb"):
                growth = tree / small["end_to_end"]["tree_peak_pss_mb"] - 1
                check("End to end tree peak PSS growth 100k -> 1M", round(growth, 2), "< 0.30", growth < 0.3)
            for stage in ("prepare", "end_to_end"):
                times = (
                    by_size["1M"]["stages"][stage]["seconds"] / by_size["100k"]["stages"][stage]["seconds"]
                )
                check(f"{LABELS[stage]} time 1M / 100k", round(times, 1), "<= 11", times <= 11)
    return checks


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average_at_start": os.getloadavg(),
    }


def print_table(by_size: dict[str, dict[str, Any]], ratio: dict[str, dict[str, float]]) -> None:
    names = list(by_size)
    print()
    print(f"{'stage':22}" + "".join(f"{name + ' ev/s':>14}{'cpu s':>8}{'MB':>6}" for name in names))
    for stage in STAGES:
        row = f"{LABELS[stage]:22}"
        for name in names:
            value = by_size[name]["stages"][stage]
            row += f"{value['events_per_second']:>14,.0f}{value['cpu_seconds']:>8.1f}"
            row += f"{value['peak_rss_mb']:>6.0f}"
        print(row)
    print()
    for key, text in (
        ("prepare_vs_floor", "Prepare / Floor"),
        ("send_vs_official", "Send / Official send"),
        ("end_to_end_vs_straightforward", "End to end / Straightforward"),
    ):
        print(f"{text:30}" + "".join(f"{name:>6} {ratio[name][key]:6.2f}x" for name in names))


def plot(by_size: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [run["size"] for run in by_size.values()]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for stage in STAGES:
        runs = list(by_size.values())
        times.plot(sizes, [run["stages"][stage]["seconds"] for run in runs], marker="o", label=LABELS[stage])
        memory.plot(
            sizes, [run["stages"][stage]["peak_rss_mb"] for run in runs], marker="o", label=LABELS[stage]
        )
    times.set(xscale="log", yscale="log", xlabel="events in the window", ylabel="seconds", title="Time")
    # End to end's own process is only the task's; its workers count in the tree's PSS.
    memory.plot(
        sizes,
        [run["stages"]["end_to_end"].get("tree_peak_pss_mb", 0) for run in by_size.values()],
        marker="o",
        linestyle="--",
        color=memory.get_lines()[STAGES.index("end_to_end")].get_color(),
        label="End to end, process tree (PSS)",
    )
    memory.set(
        xscale="log", yscale="log", xlabel="events in the window", ylabel="peak RSS (MB)", title="Peak memory"
    )
    memory.legend(fontsize=8)
    memory.axhline(400, color="grey", linestyle="--", linewidth=1)
    times.legend(fontsize=8)
    for axes in (times, memory):
        axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", DEFAULT_SIZES), help="e.g. 10k,100k")
    parser.add_argument("--receivers", type=int, default=2, help="receiver processes sharing the port")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json and latest.png go")
    parser.add_argument(
        "--mmap-threshold",
        action="store_true",
        help="run every stage with MALLOC_MMAP_THRESHOLD_=131072 (less memory, more time)",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "BENCH_WRITE_KEY"}
    if args.mmap_threshold:
        env.update(MALLOC_ENV)
    info = machine()
    print(f"Machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB, Python {info['python']}")
    by_size: dict[str, dict[str, Any]] = {}
    for size in parse_sizes(args.sizes):
        print(f"Window of {label(size)} events", flush=True)
        by_size[label(size)] = measure_size(size, args.receivers, env)
    ratio = ratios(by_size)
    print_table(by_size, ratio)
    checks = targets(by_size, ratio)
    print()
    for item in checks:
        print(
            f"{'met ' if item['met'] else 'MISS'} {item['target']}: {item['value']} (target {item['goal']})"
        )
    problems = [problem for run in by_size.values() for problem in run["problems"]]
    for problem in problems:
        print(f"CHECK FAILED {problem}")

    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "malloc_env": {key: env[key] for key in env if key.startswith("MALLOC_")},
        "receivers": args.receivers,
        "seconds": round(time.perf_counter() - started, 1),
        "sizes": by_size,
        "ratios": ratio,
        "targets": checks,
    }
    (args.out / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
    plot(by_size, args.out / "latest.png")
    print(f"\nWrote {args.out / 'latest.json'} and latest.png in {document['seconds']:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
