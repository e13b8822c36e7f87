"""``make airflow``: run Airflow 3 for this project on localhost, with its metadata in PostgreSQL.

Starts the scheduler, dag-processor, api-server and triggerer as separate processes (LocalExecutor) on
the project's ``dags/`` and ``plugins/``, creates the PostgreSQL database when it is missing, loads the
connections, variables and pools of ``airflow_settings.yaml`` (the Astro CLI's format) without the
Astro CLI, and prints the UI address and how to log in. Connections that the settings file leaves
without credentials are served by local stand-ins: a moto S3 server holding generated Currents files
for the last hours, and the Segment-compatible receiver. Stop it with Ctrl-C.

The same :class:`LocalAirflow` starts the deployments of the end-to-end tests (``tests/e2e``).

PostgreSQL is found through the usual libpq variables (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGPASSWORD``), by default ``postgres@127.0.0.1:5432`` without a password.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = ROOT / "var" / "airflow"
DEFAULT_DATABASE = "braze_currents"
DEFAULT_SETTINGS = ROOT / "airflow_settings.yaml"
CORE_COMPONENTS = ("scheduler", "dag-processor", "api-server", "triggerer")
# The environment variable that names a worker for hostname_callable (see worker_hostname).
HOSTNAME_VARIABLE = "BRAZE_CURRENTS_HOSTNAME"
# Extra keys that make an AWS connection point somewhere on purpose.
_AWS_TARGET_KEYS = ("endpoint_url", "role_arn", "profile_name", "aws_session_token")


class SetupError(RuntimeError):
    """A prerequisite (PostgreSQL, a port, the settings file) is missing; the message says how to fix it."""


def worker_hostname() -> str:
    """Return the host name Airflow records for task instances: ``$BRAZE_CURRENTS_HOSTNAME`` or the FQDN.

    Set as ``[core] hostname_callable`` so that several workers on one machine (the Celery end-to-end
    test) report distinct names, as workers on separate machines would.
    """
    return os.environ.get(HOSTNAME_VARIABLE) or socket.getfqdn()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Tell whether ``port`` can be bound on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- PostgreSQL ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Postgres:
    """Where the PostgreSQL server is, from the libpq environment variables.

    :param host: the server's host.
    :param port: the server's port.
    :param user: the role that creates and owns the databases.
    :param password: the role's password, empty for trust auth.
    """

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Postgres:
        env = os.environ if env is None else env
        return cls(
            host=env.get("PGHOST") or "127.0.0.1",
            port=int(env.get("PGPORT") or 5432),
            user=env.get("PGUSER") or "postgres",
            password=env.get("PGPASSWORD") or "",
        )

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"{driver}://{auth}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """Open a psycopg2 connection in autocommit mode; raise :class:`SetupError` when unreachable."""
        import psycopg2

        try:
            conn = psycopg2.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password or None,
                dbname=database,
                connect_timeout=5,
            )
        except psycopg2.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SetupError(
                f"PostgreSQL is not reachable as {self.user}@{self.host}:{self.port} ({first_line}). "
                "Start a server (README: 'make airflow') or point PGHOST/PGPORT/PGUSER/PGPASSWORD at one."
            ) from None
        conn.autocommit = True
        return conn

    def ensure_database(self, name: str, *, recreate: bool = False) -> bool:
        """Create database ``name`` when it is missing (drop it first with ``recreate``); True if created.

        :param name: lower-case letters, digits and underscores.
        :param recreate: drop an existing database of that name first.
        """
        if not name.replace("_", "").isalnum() or name.lower() != name:
            raise SetupError(f"database name {name!r}: use lower-case letters, digits and underscores")
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                if recreate:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    return False
                cur.execute(f'CREATE DATABASE "{name}"')
                return True
        finally:
            conn.close()


# --- airflow_settings.yaml ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AirflowSettings:
    """The connections, variables and pools of an ``airflow_settings.yaml`` in the Astro CLI's format.

    :param connections: one dict per connection with Airflow's field names (``conn_id``, ``conn_type``,
        ``host``, ``schema``, ``login``, ``password``, ``port``, ``extra`` as a JSON string, or ``uri``).
    :param variables: variable name to value.
    :param pools: ``(name, slots, description)`` per pool.
    """

    connections: list[dict[str, Any]]
    variables: dict[str, str]
    pools: list[tuple[str, int, str]]

    def connection(self, conn_id: str) -> dict[str, Any] | None:
        return next((conn for conn in self.connections if conn["conn_id"] == conn_id), None)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def read_settings(path: str | os.PathLike[str]) -> AirflowSettings:
    """Read and check an ``airflow_settings.yaml``; raise :class:`SetupError` naming the bad entry.

    The file keeps the Astro CLI's format (``airflow: connections/pools/variables`` with ``conn_*``,
    ``pool_*`` and ``variable_*`` keys) so that ``astro dev start`` reads the same file.

    :param path: the settings file.
    """
    import yaml

    where = str(path)
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SetupError(f"{where}: cannot read it ({exc})") from None
    section = document.get("airflow") if isinstance(document, dict) else None
    if section is None:
        return AirflowSettings([], {}, [])
    if not isinstance(section, dict):
        raise SetupError(f"{where}: 'airflow' must be a mapping with connections, pools and variables")

    connections = []
    for index, entry in enumerate(section.get("connections") or []):
        label = f"{where}: connections[{index}]"
        if not isinstance(entry, dict) or _blank(entry.get("conn_id")):
            raise SetupError(f"{label}: every connection needs a conn_id")
        label = f"{where}: connection {entry['conn_id']!r}"
        if not _blank(entry.get("conn_uri")):
            connections.append({"conn_id": str(entry["conn_id"]), "uri": str(entry["conn_uri"])})
            continue
        if _blank(entry.get("conn_type")):
            raise SetupError(f"{label}: conn_type is missing (or give conn_uri)")
        extra = entry.get("conn_extra")
        if isinstance(extra, dict):
            extra = json.dumps({key: value for key, value in extra.items() if value is not None})
        elif _blank(extra):
            extra = None
        elif isinstance(extra, str):
            try:
                json.loads(extra)
            except ValueError:
                raise SetupError(f"{label}: conn_extra must be a mapping or a JSON object string") from None
        else:
            raise SetupError(f"{label}: conn_extra must be a mapping or a JSON object string")
        port = entry.get("conn_port")
        if not _blank(port) and not str(port).isdigit():
            raise SetupError(f"{label}: conn_port must be a number, got {port!r}")
        connections.append(
            {
                "conn_id": str(entry["conn_id"]),
                "conn_type": str(entry["conn_type"]),
                "host": None if _blank(entry.get("conn_host")) else str(entry["conn_host"]),
                "schema": None if _blank(entry.get("conn_schema")) else str(entry["conn_schema"]),
                "login": None if _blank(entry.get("conn_login")) else str(entry["conn_login"]),
                "password": None if _blank(entry.get("conn_password")) else str(entry["conn_password"]),
                "port": None if _blank(port) else int(port),
                "extra": extra,
            }
        )

    variables = {}
    for index, entry in enumerate(section.get("variables") or []):
        if not isinstance(entry, dict) or _blank(entry.get("variable_name")):
            raise SetupError(f"{where}: variables[{index}] needs a variable_name")
        value = entry.get("variable_value")
        variables[str(entry["variable_name"])] = "" if value is None else str(value)

    pools = []
    for index, entry in enumerate(section.get("pools") or []):
        if not isinstance(entry, dict) or _blank(entry.get("pool_name")):
            raise SetupError(f"{where}: pools[{index}] needs a pool_name")
        slots = entry.get("pool_slot")
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 0:
            raise SetupError(f"{where}: pool {entry['pool_name']!r}: pool_slot must be a whole number >= 0")
        pools.append((str(entry["pool_name"]), slots, str(entry.get("pool_description") or "")))
    return AirflowSettings(connections, variables, pools)


def needs_stand_in(conn: Mapping[str, Any] | None, kind: str) -> bool:
    """Tell whether a connection from the settings file is a placeholder that a local stand-in replaces.

    :param conn: the connection as :func:`read_settings` returns it, or None when the file lacks it.
    :param kind: ``s3`` (real when it has an access key or an extra such as ``endpoint_url``) or
        ``segment`` (real when it has a write key).
    """
    if conn is None:
        return True
    if conn.get("uri"):
        return False
    if kind == "segment":
        return not conn.get("password")
    extra = json.loads(conn["extra"]) if conn.get("extra") else {}
    return not conn.get("login") and not any(extra.get(key) for key in _AWS_TARGET_KEYS)


def apply_settings(settings: AirflowSettings, *, skip_connections: Iterable[str] = ()) -> list[str]:
    """Write the settings into the metadata database (create or replace); return one line per item.

    Runs inside an Airflow environment (``AIRFLOW_HOME`` and the database configured).

    :param settings: what :func:`read_settings` returned.
    :param skip_connections: connection ids left out (served by local stand-ins instead).
    """
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    skipped = set(skip_connections)
    done = []
    with create_session() as session:
        for fields in settings.connections:
            if fields["conn_id"] in skipped:
                continue
            session.execute(delete(Connection).where(Connection.conn_id == fields["conn_id"]))
            session.add(Connection(**fields))
            done.append(f"connection {fields['conn_id']}")
        for name, slots, description in settings.pools:
            Pool.create_or_update_pool(name, slots, description, False, session=session)
            done.append(f"pool {name} ({slots} slots)")
    for name, value in settings.variables.items():
        Variable.set(name, value)
        done.append(f"variable {name}")
    return done


# --- the deployment ---------------------------------------------------------------------------------


@dataclasses.dataclass
class LocalAirflow:
    """One Airflow deployment on this machine: its home, database, settings and processes.

    :param home: ``AIRFLOW_HOME``; logs of every process go to ``home/process-logs``.
    :param database: the PostgreSQL database of the metadata.
    :param api_port: the api-server's port on 127.0.0.1.
    :param executor: ``LocalExecutor`` or ``CeleryExecutor``.
    :param env: extra environment for every process (connections, the exports config, Celery settings).
    :param inherit_airflow_env: keep ``AIRFLOW*`` variables of this process (False isolates tests).
    :param postgres: the PostgreSQL server.
    """

    home: Path
    database: str
    api_port: int
    executor: str = "LocalExecutor"
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    inherit_airflow_env: bool = True
    postgres: Postgres = dataclasses.field(default_factory=Postgres.from_env)
    _processes: list[tuple[str, subprocess.Popen]] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sql_alchemy_conn(self) -> str:
        return self.postgres.url(self.database)

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def environment(self, **overrides: str) -> dict[str, str]:
        """Return the environment every Airflow process of this deployment runs with."""
        bin_dir = str(Path(sys.executable).parent)
        base = {
            key: value
            for key, value in os.environ.items()
            if self.inherit_airflow_env or not key.startswith("AIRFLOW")
        }
        base.update(
            PATH=bin_dir + os.pathsep + base.get("PATH", ""),
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR=self.executor,
            AIRFLOW__CORE__HOSTNAME_CALLABLE="braze_currents_airflow.local_airflow.worker_hostname",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.sql_alchemy_conn,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=self.postgres.url(self.database, "postgresql+asyncpg"),
        )
        base.update(self.env)
        base.update(overrides)
        return base

    def write_env_file(self) -> Path:
        """Write ``home/env.sh``: the settings a shell needs to run ``airflow`` commands on this deployment.

        Connections (``AIRFLOW_CONN_*``) are left out, so no credential lands in the file.
        """
        env = self.environment()
        keys = sorted(key for key in env if key.startswith("AIRFLOW") and not key.startswith("AIRFLOW_CONN_"))
        if "BRAZE_CURRENTS_CONFIG" in env:
            keys.append("BRAZE_CURRENTS_CONFIG")
        lines = [f"export {key}={shlex.quote(env[key])}" for key in keys]
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
        path = self.home / "env.sh"
        path.touch(mode=0o600)
        path.write_text(
            "# Written by make airflow: `source` it to run airflow commands on that deployment.\n"
            + "\n".join(lines)
            + "\n"
        )
        return path

    def airflow(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command of this deployment and return its completed process."""
        result = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"airflow {' '.join(args)} exited {result.returncode}:\n{tail}")
        return result

    def prepare(self, *, recreate_database: bool = False) -> None:
        """Create the home and the database, and migrate the metadata schema."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "process-logs").mkdir(exist_ok=True)
        self.postgres.ensure_database(self.database, recreate=recreate_database)
        self.airflow("db", "migrate", timeout=600)

    def load_settings(self, path: str | os.PathLike[str], *, skip_connections: Iterable[str] = ()) -> str:
        """Load an ``airflow_settings.yaml`` into this deployment's database; return what was loaded."""
        skip = [arg for conn_id in skip_connections for arg in ("--skip-connection", conn_id)]
        result = subprocess.run(
            [sys.executable, "-m", "braze_currents_airflow.local_airflow", "load-settings", str(path), *skip],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        if result.returncode != 0:
            raise SetupError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed")
        return result.stdout

    def start(self, components: Sequence[str] = CORE_COMPONENTS) -> None:
        """Start the Airflow components, each in its own process group, with free log-server ports."""
        ports = {
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
        self.env.update(ports)
        for component in components:
            args = [component]
            if component == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.api_port)]
            self._spawn(component, args, self.environment())

    def start_celery_worker(self, name: str, *, concurrency: int = 2, queues: str = "default") -> None:
        """Start a Celery worker that records ``name`` as the host of the task instances it runs."""
        env = self.environment(
            **{
                HOSTNAME_VARIABLE: name,
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
        )
        args = ["celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", str(concurrency)]
        self._spawn(f"celery-{name}", [*args, "--queues", queues], env)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_path = self.home / "process-logs" / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "airflow"), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        self._processes.append((name, process))

    def exited(self) -> list[str]:
        """Return the names of started processes that have exited."""
        return [name for name, process in self._processes if process.poll() is not None]

    def health(self) -> dict[str, Any]:
        """Return the api-server's health document, or an empty dict when it does not answer yet."""
        import requests

        try:
            response = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        except requests.RequestException:
            return {}
        return response.json() if response.ok else {}

    def wait_healthy(self, *, timeout: float = 240, components: Sequence[str] = ("scheduler",)) -> None:
        """Wait until the api-server answers and reports ``components`` healthy; raise on timeout or exit.

        :param components: keys of the health document that must be ``healthy`` (``scheduler``,
            ``triggerer``, ``dag_processor``).
        """
        deadline = time.monotonic() + timeout
        while True:
            dead = self.exited()
            if dead:
                raise RuntimeError(f"Airflow processes exited: {dead}; see {self.home / 'process-logs'}")
            health = self.health()
            states = {key: (health.get(key) or {}).get("status") for key in ("metadatabase", *components)}
            if health and all(state == "healthy" for state in states.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Airflow not healthy after {timeout:.0f}s: {states}")
            time.sleep(1)

    def admin_password(self) -> str | None:
        """Return the generated password of the ``admin`` user, once the api-server has written it."""
        try:
            return json.loads(self.passwords_file.read_text()).get("admin")
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 30) -> None:
        """Stop the processes this deployment started: SIGTERM to each group, SIGKILL after ``timeout``."""
        for _, process in reversed(self._processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for _, process in reversed(self._processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        self._processes.clear()


# --- make airflow ----------------------------------------------------------------------------------

SAMPLE_HOURS = 3
SAMPLE_EVENTS_PER_TYPE = 200


def _stand_in_plan(settings: AirflowSettings, config_path: Path, local: bool) -> tuple[list, set, set]:
    """Return the Currents and the S3 and Segment connection ids that the local stand-ins serve."""
    from braze_currents.config import ConfigError, load_config

    try:
        currents = load_config(config_path)
    except (ConfigError, OSError) as exc:
        raise SetupError(f"exports config {config_path}: {exc}") from None
    if not local:
        return currents, set(), set()
    s3_ids = {
        c.source_conn_id for c in currents if needs_stand_in(settings.connection(c.source_conn_id), "s3")
    }
    segment_ids = {
        c.segment_conn_id
        for c in currents
        if needs_stand_in(settings.connection(c.segment_conn_id), "segment")
    }
    return currents, s3_ids, segment_ids


def _fill_buckets(services: Any, currents: Sequence[Any], s3_ids: set[str], last_hour: datetime) -> list[str]:
    """Create the buckets the Currents use on the moto server and write recent hours of Currents files."""
    from braze_currents.generator import s3_put, write_window

    client = services.s3_client()
    lines = []
    for current in currents:
        if current.source_conn_id not in s3_ids:
            continue
        buckets = {current.bucket}
        for location in (current.staging, current.state, current.dead_letters):
            if location.startswith("s3://"):
                buckets.add(location[len("s3://") :].split("/", 1)[0])
        for bucket in sorted(buckets):
            client.create_bucket(Bucket=bucket)
        for step in range(SAMPLE_HOURS):
            hour = last_hour - timedelta(hours=step)
            write_window(
                s3_put(client, current.bucket),
                prefix=current.prefix,
                hour=hour,
                event_types=current.event_types,
                events_per_type=SAMPLE_EVENTS_PER_TYPE,
                seed=step,
            )
        first = last_hour - timedelta(hours=SAMPLE_HOURS - 1)
        lines.append(
            f"  s3://{current.bucket}/{current.prefix}: {SAMPLE_HOURS} hours of sample files, "
            f"{first:%Y-%m-%dT%H}:00Z to {last_hour:%Y-%m-%dT%H}:00Z"
        )
    return lines


def _stand_in_env(services: Any, s3_ids: set[str], segment_ids: set[str]) -> dict[str, str]:
    """Return ``AIRFLOW_CONN_*`` variables that point the stand-in connection ids at the local servers."""
    base = services.connection_env()
    env = {}
    for conn_id in s3_ids:
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = base["AIRFLOW_CONN_BRAZE_CURRENTS_S3"]
    for conn_id in segment_ids:
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = base["AIRFLOW_CONN_SEGMENT_DEFAULT"]
    return env


def run_airflow(args: argparse.Namespace) -> int:
    """Start everything, print how to reach it, and wait for Ctrl-C."""
    import contextlib

    from braze_currents.config import default_config_path

    home = Path(args.home).resolve()
    config_path = Path(args.config or os.environ.get("BRAZE_CURRENTS_CONFIG") or default_config_path())
    settings = read_settings(args.settings)
    currents, s3_ids, segment_ids = _stand_in_plan(settings, config_path, not args.no_stand_ins)
    port = args.port
    last_sample_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    if not port_is_free(port):
        port = free_port()
        print(f"Port {args.port} is taken; using {port}.")

    with contextlib.ExitStack() as stack:
        env = {"BRAZE_CURRENTS_CONFIG": str(config_path.resolve())}
        if s3_ids or segment_ids:
            from braze_currents.localstack import LocalServices

            services = stack.enter_context(LocalServices(home / "services"))
            env.update(_stand_in_env(services, s3_ids, segment_ids))
            stand_in_lines = _fill_buckets(services, currents, s3_ids, last_sample_hour)
        deployment = LocalAirflow(home=home, database=args.database, api_port=port, env=env)
        stack.callback(deployment.stop)
        pg = deployment.postgres
        print(f"Metadata database: PostgreSQL {pg.host}:{pg.port}/{args.database}")
        deployment.prepare()
        loaded = deployment.load_settings(args.settings, skip_connections=s3_ids | segment_ids)
        print(f"Loaded from {args.settings}:" + ("" if loaded.strip() else " nothing"))
        for line in loaded.strip().splitlines():
            print(f"  {line}")
        if s3_ids or segment_ids:
            print("Local stand-ins (the settings file gives these connections no credentials):")
            for conn_id in sorted(s3_ids):
                print(f"  {conn_id} -> moto S3 server {services.s3_endpoint}")
            for conn_id in sorted(segment_ids):
                print(f"  {conn_id} -> Segment receiver {services.receiver.url} (a random write key)")
            for line in stand_in_lines:
                print(line)
            print(f"  accepted events are appended to {services.accepted_path}")
        print("Starting scheduler, dag-processor, api-server and triggerer (about a minute) ...", flush=True)
        deployment.start()
        deployment.wait_healthy(components=("scheduler", "triggerer", "dag_processor"), timeout=300)
        password_deadline = time.monotonic() + 60
        while deployment.admin_password() is None and time.monotonic() < password_deadline:
            time.sleep(0.5)
        print()
        print(f"Airflow UI: {deployment.url}")
        print(f"Log in as admin; the password is in {deployment.passwords_file}")
        print(f"DAGs: {', '.join(current.dag_id for current in currents)} (a new DAG starts paused)")
        env_file = deployment.write_env_file()
        print(f"Airflow commands in another shell: source {env_file}; then e.g.")
        for current in currents[:1]:
            print(f"  airflow dags unpause {current.dag_id}")
            if current.source_conn_id in s3_ids:
                first = last_sample_hour - timedelta(hours=SAMPLE_HOURS - 1)
                print(
                    f"  airflow backfill create --dag-id {current.dag_id} "
                    f"--from-date {first.isoformat()} --to-date {last_sample_hour.isoformat()}"
                )
        print(f"Process logs: {home / 'process-logs'}. Press Ctrl-C to stop.", flush=True)

        stop = {"signal": None}

        def _on_signal(signum: int, frame: Any) -> None:
            stop["signal"] = signum

        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        while stop["signal"] is None:
            dead = deployment.exited()
            if dead:
                print(f"Stopping: {', '.join(dead)} exited; see {home / 'process-logs'}", file=sys.stderr)
                return 1
            time.sleep(1)
        print("Stopping Airflow and the stand-ins ...", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``make airflow`` (no subcommand) or ``load-settings FILE``."""
    parser = argparse.ArgumentParser(
        prog="python -m braze_currents_airflow.local_airflow",
        description="Run Airflow for this project on localhost with PostgreSQL, or load a settings file.",
    )
    parser.add_argument("--home", default=str(DEFAULT_HOME), help="AIRFLOW_HOME (default var/airflow)")
    parser.add_argument(
        "--database", default=DEFAULT_DATABASE, help="PostgreSQL database (created if missing)"
    )
    parser.add_argument("--port", type=int, default=8080, help="api-server port on 127.0.0.1 (default 8080)")
    parser.add_argument("--settings", default=str(DEFAULT_SETTINGS), help="airflow_settings.yaml to load")
    parser.add_argument(
        "--config", help="exports config (default: $BRAZE_CURRENTS_CONFIG or include/exports.yaml)"
    )
    parser.add_argument(
        "--no-stand-ins",
        action="store_true",
        help="never replace connections by the local moto server and receiver",
    )
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("load-settings", help="load a settings file into the configured Airflow database")
    load.add_argument("file")
    load.add_argument("--skip-connection", action="append", default=[], metavar="CONN_ID")
    args = parser.parse_args(argv)

    try:
        if args.command == "load-settings":
            for line in apply_settings(read_settings(args.file), skip_connections=args.skip_connection):
                print(line)
            return 0
        if shutil.which("airflow", path=str(Path(sys.executable).parent)) is None:
            raise SetupError(f"no airflow command next to {sys.executable}; run `make venv` first")
        return run_airflow(args)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted; stopped what had started.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
