"""The Astro CLI project files: the Dockerfile, packages.txt, .dockerignore and airflow_settings.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The keys the Astro CLI reads from airflow_settings.yaml (as `astro dev init` writes them).
CONNECTION_KEYS = {
    "conn_id",
    "conn_type",
    "conn_host",
    "conn_schema",
    "conn_login",
    "conn_password",
    "conn_port",
    "conn_extra",
}
POOL_KEYS = {"pool_name", "pool_slot", "pool_description"}
VARIABLE_KEYS = {"variable_name", "variable_value"}


def pinned(name: str) -> str:
    text = (ROOT / "requirements.txt").read_text()
    return re.search(rf"^{re.escape(name)}==(\S+)$", text, flags=re.MULTILINE).group(1)


def settings() -> dict:
    return yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())


def test_the_dockerfile_builds_on_the_runtime_of_the_pinned_airflow_and_python():
    text = (ROOT / "Dockerfile").read_text()
    (image,) = re.findall(r"^FROM (\S+)$", text, flags=re.MULTILINE)
    airflow = pinned("apache-airflow")
    minor = ".".join(airflow.split(".")[:2])
    python = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text()).group(1)

    assert re.fullmatch(rf"astrocrpublic\.azurecr\.io/runtime:{re.escape(minor)}-\d+-python-{python}", image)
    assert f"v == '{airflow}'" in text
    assert "pip install --no-cache-dir --no-deps -e /usr/local/airflow" in text


def test_packages_txt_lists_only_package_names():
    lines = [line for line in (ROOT / "packages.txt").read_text().splitlines() if line.strip()]

    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", line) for line in lines), lines


def test_the_docker_context_leaves_out_local_environments_and_credentials():
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())

    assert {".venv", ".git", ".env", "var", "airflow_settings.yaml", "*.egg-info"} <= ignored


def test_airflow_settings_uses_only_keys_the_astro_cli_reads():
    airflow = settings()["airflow"]

    assert set(airflow) == {"connections", "pools", "variables"}
    for connection in airflow["connections"]:
        assert set(connection) <= CONNECTION_KEYS, connection["conn_id"]
        assert isinstance(connection["conn_extra"], dict)
    for pool in airflow["pools"]:
        assert set(pool) <= POOL_KEYS
    for variable in airflow["variables"]:
        assert set(variable) <= VARIABLE_KEYS
    assert [c["conn_id"] for c in airflow["connections"]] == ["braze_currents_s3", "segment_default"]


def test_airflow_settings_holds_no_credentials():
    for connection in settings()["airflow"]["connections"]:
        assert not connection.get("conn_password"), connection["conn_id"]
        assert not connection.get("conn_login"), connection["conn_id"]


def test_the_settings_connections_have_registered_types_and_the_hook_reads_them(monkeypatch):
    from airflow.providers_manager import ProvidersManager

    from braze_currents_airflow.hooks import SegmentHook

    manager = ProvidersManager()
    manager.initialize_providers_hooks()
    registered = {info.connection_type for info in manager.iter_connection_type_hook_ui_metadata()}
    connections = {c["conn_id"]: c for c in settings()["airflow"]["connections"]}
    assert {c["conn_type"] for c in connections.values()} <= registered

    # What the Astro CLI creates from the file, once the user has typed a write key and chosen eu.
    segment = connections["segment_default"]
    fields = {
        "conn_type": segment["conn_type"],
        "password": "wk-from-settings",
        "extra": {**segment["conn_extra"], "region": "eu"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_DEFAULT", json.dumps(fields))

    assert SegmentHook().endpoint() == "https://events.eu1.segmentapis.com/v1/batch"
