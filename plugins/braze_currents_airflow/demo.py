"""``make demo``: three real windows through the DAG, against local S3 and Segment stand-ins.

Starts a moto S3 server and the Segment-compatible receiver on free localhost ports, writes
realistic Currents files for the last three full hours, runs the DAG for each window with
``dag.test`` on a SQLite metadata database, prints one summary line per window and stops the servers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKDIR = ROOT / "var" / "demo"
TYPES = (
    "users.messages.email.Send",
    "users.messages.email.Delivery",
    "users.messages.email.Open",
    "users.messages.email.Click",
    "users.messages.pushnotification.Send",
    "users.messages.pushnotification.Open",
    "users.messages.sms.Send",
    "users.messages.sms.Delivery",
    "users.messages.inappmessage.Impression",
    "users.canvas.Entry",
)


def _prepare_environment() -> None:
    home = WORKDIR / "airflow_home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        BRAZE_CURRENTS_CONFIG=str(WORKDIR / "exports.yaml"),
    )


def _write_config(bucket: str) -> None:
    import yaml

    entry = {
        "name": "demo",
        "start_date": "2026-01-01T00:00:00Z",
        "source": {"conn_id": "braze_currents_s3", "bucket": bucket, "prefix": "currents"},
        "event_types": list(TYPES),
        "segment": {"conn_id": "segment_default", "region": "us"},
        "staging": str(WORKDIR / "staging"),
        "dead_letters": str(WORKDIR / "dead_letters"),
        "state": str(WORKDIR / "state"),
        "mapping_file": str(ROOT / "include" / "segment_mapping.yaml"),
        "on_dead_letters": "warn",
        "chunk_events": 10_000,
        "retries": 1,
    }
    (WORKDIR / "exports.yaml").write_text(yaml.safe_dump({"currents": [entry]}, sort_keys=False))


def main() -> int:
    """Run the demo; return the process exit code."""
    import shutil

    shutil.rmtree(WORKDIR, ignore_errors=True)
    _prepare_environment()
    logging.basicConfig(level=logging.WARNING)
    print("Creating the Airflow metadata database (SQLite) ...", flush=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)

    from braze_currents.generator import s3_put, write_window
    from braze_currents.localstack import LocalServices

    last_full_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    hours = [last_full_hour - timedelta(hours=n) for n in (2, 1, 0)]
    failures = 0
    with LocalServices(WORKDIR / "services") as services:
        os.environ.update(services.connection_env())
        _write_config(services.bucket)
        put = s3_put(services.s3_client(), services.bucket)
        for seed, hour in enumerate(hours):
            write_window(
                put, prefix="currents", hour=hour, event_types=TYPES, events_per_type=2000, seed=seed
            )
        print(f"Wrote Currents files for {len(TYPES)} event types and 3 hours to {services.s3_endpoint}")

        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(ROOT / "dags"))
        if bag.import_errors:
            print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
            return 1
        dag = bag.get_dag("currents_to_segment_demo")
        for hour in hours:
            run = dag.test(logical_date=hour)
            folder = WORKDIR / "dead_letters" / "demo" / f"date={hour:%Y-%m-%d-%H}"
            report_path = folder / "report.json"
            if run.state != "success" or not report_path.exists():
                failures += 1
                print(f"window {hour:%Y-%m-%dT%H}:00Z  FAILED (state {run.state})")
                continue
            counts = json.loads(report_path.read_text())["counts"]
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(counts["dropped"].items())) or "none"
            print(
                f"window {hour:%Y-%m-%dT%H}:00Z  files={counts['files']}  read={counts['events_read']}  "
                f"dropped: {dropped}  sent={counts['sent']}  dead_lettered={counts['dead_lettered']}  "
                f"batches={counts['batches']}"
            )
        stats = services.receiver.stats()
        print(
            f"Receiver accepted {stats['accepted']} events in {stats['requests']} requests "
            f"({stats['duplicates']} repeats); they are in {services.accepted_path}"
        )
        print(f"Reports and dead letters: {WORKDIR / 'dead_letters' / 'demo'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
