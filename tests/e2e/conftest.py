"""End-to-end fixtures: real Airflow deployments on PostgreSQL, started and stopped by the tests.

Each test module gets its own deployment (scheduler, dag-processor, api-server and, per module,
triggerer or Celery workers) on free localhost ports, a moto S3 server and the Segment receiver in this
process, and a PostgreSQL database dropped and created for it. A missing PostgreSQL or Redis fails the
tests: it is never a reason to skip them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from braze_currents.generator import s3_put, write_window
from braze_currents_airflow.local_airflow import LocalAirflow, Postgres, SetupError, free_port

ROOT = Path(__file__).resolve().parents[2]
WORK_ROOT = ROOT / "var" / "e2e"
OPT_IN = "BRAZE_CURRENTS_E2E"
LOCK_KEY = 0x42_72_61_7A_65  # any constant; only e2e sessions take this advisory lock
NOTES = WORK_ROOT / "run-notes.txt"
TYPES = (
    "users.messages.email.Send",
    "users.messages.email.Open",
    "users.messages.pushnotification.Send",
    "users.messages.sms.Delivery",
    "users.canvas.Entry",
)
EVENTS_PER_TYPE = 1200
TERMINAL = {"success", "failed"}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Collect these tests only under ``make test-e2e`` (it sets ``BRAZE_CURRENTS_E2E=1``).

    A plain ``pytest`` would otherwise start real deployments and drop the e2e databases under a
    colleague's running ``make test-e2e``.
    """
    if os.environ.get(OPT_IN) != "1" and collection_path.name.startswith("test_"):
        return True
    return None


@pytest.fixture(scope="session", autouse=True)
def exclusive_session():
    """Hold a PostgreSQL advisory lock for the session: one e2e session per server at a time."""
    conn = require_postgres().connect()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
        (locked,) = cur.fetchone()
    if not locked:
        conn.close()
        pytest.fail("another e2e session holds the lock on this PostgreSQL server; wait for it to finish")
    NOTES.unlink(missing_ok=True)
    try:
        yield
    finally:
        conn.close()


def workdir_for(name: str) -> Path:
    """Return an emptied folder under ``var/e2e`` for one deployment, kept after the run for its logs.

    Not pytest's tmp_path: pytest prunes old temporary folders, also while another session runs.
    """
    path = WORK_ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def note(line: str) -> None:
    """Append a line to ``var/e2e/run-notes.txt``: what the run did, for the release notes."""
    NOTES.parent.mkdir(parents=True, exist_ok=True)
    with NOTES.open("a") as handle:
        handle.write(line + "\n")


def now_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, every: float = 1.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def current_entry(name: str, bucket: str, workdir: Path | str, **overrides: Any) -> dict[str, Any]:
    """Return an exports-config entry for a test Current with its own prefix and messageId prefix."""
    from tests import helpers

    settings = {
        "start_date": (now_hour() - timedelta(days=2)).isoformat(),
        "message_id_prefix": f"{name}-",
        "upload_concurrency": 2,
        **overrides,
    }
    return helpers.current_entry(
        name, bucket=bucket, workdir=workdir, prefix=name, event_types=TYPES, **settings
    )


def write_exports(path: Path, entries: Iterable[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"currents": list(entries)}, sort_keys=False))
    return path


def generate_hour(
    client: Any,
    bucket: str,
    name: str,
    hour: datetime,
    *,
    seed: int = 0,
    events_per_type: int = EVENTS_PER_TYPE,
) -> set[str]:
    """Write one hour of Currents files under prefix ``name``; return the messageIds Segment must get.

    Expected: the selected types' events with a non-blank external user id, the first occurrence of
    each id, with the Current's messageId prefix.
    """
    files = write_window(
        s3_put(client, bucket),
        prefix=name,
        hour=hour,
        event_types=TYPES,
        events_per_type=events_per_type,
        seed=seed,
    )
    seen: set[str] = set()
    expected = set()
    for generated in files:
        for event_id, external in zip(generated.ids, generated.external_ids, strict=True):
            if event_id in seen or external is None or not external.strip():
                continue
            seen.add(event_id)
            expected.add(f"{name}-{event_id}")
    assert expected, "the generator wrote no event that should be sent"
    return expected


class Deployment:
    """A started :class:`LocalAirflow` plus the questions the tests ask its database."""

    def __init__(self, airflow: LocalAirflow, services: Any, workdir: Path) -> None:
        self.airflow = airflow
        self.services = services
        self.workdir = workdir

    def sql(self, query: str, params: tuple = ()) -> list[dict[str, Any]]:
        conn = self.airflow.postgres.connect(self.airflow.database)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                names = [column.name for column in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    def cli(self, *args: str) -> str:
        return self.airflow.airflow(*args).stdout

    def backfill(
        self, dag_id: str, first: datetime, last: datetime, *, max_active_runs: int | None = None
    ) -> str:
        """Create a backfill of the hours ``first`` to ``last`` with ``airflow backfill create``."""
        args = ["--dag-id", dag_id, "--from-date", first.isoformat(), "--to-date", last.isoformat()]
        if max_active_runs is not None:
            args += ["--max-active-runs", str(max_active_runs)]
        return self.cli("backfill", "create", *args)

    def runs(self, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM dag_run WHERE dag_id = %s"
        params: tuple = (dag_id,)
        if run_type:
            query += " AND run_type = %s"
            params += (run_type,)
        return self.sql(query + " ORDER BY logical_date", params)

    def task_instances(self, dag_id: str, run_id: str | None = None) -> list[dict[str, Any]]:
        query = (
            "SELECT run_id, task_id, map_index, state, hostname, try_number, end_date, rendered_map_index "
            "FROM task_instance WHERE dag_id = %s"
        )
        params: tuple = (dag_id,)
        if run_id:
            query += " AND run_id = %s"
            params += (run_id,)
        return self.sql(query + " ORDER BY run_id, task_id, map_index", params)

    def unpause(self, dag_id: str) -> None:
        def parsed() -> bool:
            errors = self.sql("SELECT filename, stacktrace FROM import_error")
            if errors:
                pytest.fail(f"DAG import errors: {errors}")
            return bool(self.sql("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_stale", (dag_id,)))

        wait_for(parsed, timeout=180, what=f"the dag-processor to parse {dag_id}")
        self.cli("dags", "unpause", dag_id)

    def wait_runs(self, dag_id: str, run_type: str, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``count`` runs of ``run_type`` exist and all are finished; return them."""

        def finished() -> list[dict[str, Any]] | None:
            self.check_alive()
            runs = self.runs(dag_id, run_type)
            if len(runs) < count or any(run["state"] not in TERMINAL for run in runs):
                return None
            if run_type == "backfill" and self.sql(
                "SELECT 1 FROM backfill WHERE dag_id = %s AND completed_at IS NULL", (dag_id,)
            ):
                return (
                    None  # the scheduler closes a backfill shortly after its last run; only then is it done
                )
            return runs

        return wait_for(finished, timeout=timeout, what=f"{count} {run_type} runs of {dag_id} to finish")

    def check_alive(self) -> None:
        dead = self.airflow.exited()
        if dead:
            pytest.fail(f"Airflow processes exited: {dead}; logs in {self.airflow.home / 'process-logs'}")

    def accepted(self, prefix: str) -> set[str]:
        return {mid for mid in self.services.receiver.accepted_ids() if mid.startswith(prefix)}

    def report(self, name: str, hour: datetime) -> dict[str, Any]:
        path = self.workdir / "dead_letters" / name / f"date={hour:%Y-%m-%d-%H}" / "report.json"
        return json.loads(path.read_text())


def require_postgres() -> Postgres:
    postgres = Postgres.from_env()
    try:
        postgres.connect().close()
    except SetupError as exc:
        pytest.fail(str(exc))
    return postgres


def start_deployment(
    *,
    home: Path,
    database: str,
    services: Any,
    exports: Path,
    executor: str = "LocalExecutor",
    components: tuple[str, ...] = ("scheduler", "dag-processor", "api-server", "triggerer"),
    extra_env: dict[str, str] | None = None,
) -> LocalAirflow:
    """Create the database, migrate, and start the components; return once the scheduler is healthy."""
    env = {
        **services.connection_env(),
        "BRAZE_CURRENTS_CONFIG": str(exports),
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "600",
        **(extra_env or {}),
    }
    airflow = LocalAirflow(
        home=home,
        database=database,
        api_port=free_port(),
        executor=executor,
        env=env,
        inherit_airflow_env=False,
        postgres=require_postgres(),
    )
    airflow.prepare(recreate_database=True)
    try:
        airflow.start(components)
        airflow.wait_healthy(timeout=240)
    except BaseException:
        airflow.stop()
        raise
    return airflow
