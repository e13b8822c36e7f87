"""A real Airflow api-server on PostgreSQL with the plugin, and windows run beforehand.

Session fixtures: a fresh PostgreSQL database, ``airflow db migrate``, a moto S3 server and the
Segment receiver, two Currents (``alpha``: three clean windows; ``beta``: one window with dead
letters, which fails as configured), the windows run with ``dag.test`` in a subprocess against that
database, then ``airflow api-server`` with the simple auth manager and one user. Everything listens
on 127.0.0.1 only and is stopped at the end.

These tests are slow (about two minutes) and run under ``make test-e2e``, not ``make test``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.helpers import PREFIX as HOSTILE_PREFIX
from tests.helpers import current_entry
from tests.ui.support import USER, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
PG_DSN = os.environ.get("BRAZE_UI_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
# One database per test session, so two sessions on one machine never drop each other's.
DATABASE = f"braze_currents_ui_{os.getpid()}"
EVENT_TYPES = (
    "users.messages.email.Send",
    "users.messages.email.Open",
    "users.messages.sms.Delivery",
    "users.canvas.Entry",
)
SERVER_START_SECONDS = 180


def _admin(*statements: str) -> None:
    import psycopg2

    admin = psycopg2.connect(f"{PG_DSN}/postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        admin.close()


@pytest.fixture(scope="session")
def metadata_database() -> Iterator[str]:
    """Create this session's PostgreSQL database; drop it at the end."""
    _admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", f"CREATE DATABASE {DATABASE}")
    yield f"{PG_DSN.replace('postgresql://', 'postgresql+psycopg2://')}/{DATABASE}"
    _admin(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


@dataclasses.dataclass
class RanWindow:
    dag_id: str
    current: str
    window: datetime
    run_id: str
    state: str


@dataclasses.dataclass
class Site:
    """The running api-server and what the fixture put behind it."""

    base_url: str
    password: str
    workdir: Path
    windows: list[RanWindow]
    env: dict[str, str]

    def token(self) -> str:
        response = requests.post(
            f"{self.base_url}/auth/token", json={"username": USER, "password": self.password}, timeout=30
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def report(self, window: RanWindow) -> dict[str, Any]:
        path = (
            self.workdir
            / "dead_letters"
            / window.current
            / f"date={window.window:%Y-%m-%d-%H}"
            / "report.json"
        )
        return json.loads(path.read_text())


def _write_config(path: Path, workdir: Path, bucket: str) -> None:
    def entry(name: str, **overrides: Any) -> dict[str, Any]:
        return current_entry(
            name, bucket=bucket, workdir=workdir, prefix=name, event_types=EVENT_TYPES, **overrides
        )

    beta = entry("beta", on_dead_letters="fail")
    beta["source"]["prefix"] = HOSTILE_PREFIX
    config = {"currents": [entry("alpha", on_dead_letters="warn"), beta]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _write_sources(services: Any, hours: list[datetime], beta_hour: datetime) -> None:
    from braze_currents.generator import s3_put, write_window
    from tests.helpers import write_hostile_window

    client = services.s3_client()
    put = s3_put(client, services.bucket)
    for seed, hour in enumerate(hours):
        write_window(
            put,
            prefix="alpha",
            hour=hour,
            event_types=EVENT_TYPES,
            events_per_type=300 + 150 * seed,
            seed=seed,
        )
    # Beta reads the prefix the hostile window is written under: a 40 KB event and a truncated file
    # make dead letters there, so its run fails as configured.
    write_hostile_window(client, services.bucket, beta_hour, events_per_type=150)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def site(tmp_path_factory, metadata_database) -> Iterator[Site]:
    from braze_currents.localstack import LocalServices

    workdir = tmp_path_factory.mktemp("ui-site")
    home = workdir / "airflow_home"
    home.mkdir()
    password = secrets.token_urlsafe(16)
    passwords_file = home / "passwords.json"
    passwords_file.write_text(json.dumps({USER: password}))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"

    with LocalServices(workdir / "services") as services:
        config = workdir / "exports.yaml"
        _write_config(config, workdir, services.bucket)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
        }
        env.update(services.connection_env())
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata_database,
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
            AIRFLOW__CORE__AUTH_MANAGER=(
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords_file),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
            AIRFLOW__API__BASE_URL=base_url,
            AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
            BRAZE_CURRENTS_CONFIG=str(config),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=env
        )

        last_full_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        hours = [last_full_hour - timedelta(hours=n) for n in (2, 1, 0)]
        beta_hour = last_full_hour - timedelta(hours=1)
        _write_sources(services, hours, beta_hour)
        targets = [f"currents_to_segment_alpha={hour:%Y-%m-%dT%H}" for hour in hours]
        targets.append(f"currents_to_segment_beta={beta_hour:%Y-%m-%dT%H}")
        ran = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "ui" / "run_windows.py"), *targets],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=900,
        )
        (workdir / "run_windows.log").write_text(ran.stdout + ran.stderr)
        assert ran.returncode == 0, f"running the windows failed; see {workdir / 'run_windows.log'}"
        windows = []
        for line in ran.stdout.splitlines():
            if line.startswith("WINDOW "):
                record = json.loads(line[len("WINDOW ") :])
                windows.append(
                    RanWindow(
                        dag_id=record["dag_id"],
                        current=record["dag_id"].removeprefix("currents_to_segment_"),
                        window=datetime.fromisoformat(record["window"]),
                        run_id=record["run_id"],
                        state=record["state"],
                    )
                )
        assert len(windows) == len(targets), ran.stdout[-2000:]

        log_file = workdir / "api-server.log"
        with log_file.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def healthy() -> bool:
                if server.poll() is not None:
                    raise RuntimeError(f"api-server exited with {server.returncode}; see {log_file}")
                return requests.get(f"{base_url}/api/v2/monitor/health", timeout=5).status_code == 200

            wait_for(
                healthy,
                timeout=SERVER_START_SECONDS,
                what=f"the api-server on {base_url} ({log_file})",
                ignore=(requests.RequestException,),
            )
            yield Site(base_url=base_url, password=password, workdir=workdir, windows=windows, env=env)
        finally:
            _stop(server)
