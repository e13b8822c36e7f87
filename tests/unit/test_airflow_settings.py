"""The airflow_settings.yaml loader behind ``make airflow``: Astro CLI format in, Airflow fields out."""

from __future__ import annotations

import json

import pytest

from braze_currents_airflow.local_airflow import ROOT, SetupError, needs_stand_in, read_settings

FULL = """\
airflow:
  connections:
    - conn_id: s3_real
      conn_type: aws
      conn_host:
      conn_login: AKIAEXAMPLE
      conn_password: not-a-real-secret
      conn_port:
      conn_extra:
        region_name: eu-west-1
        endpoint_url:
    - conn_id: from_uri
      conn_uri: http://user@example.invalid:8080
    - conn_id: http_with_port
      conn_type: http
      conn_host: example.invalid
      conn_port: 8443
      conn_extra: '{"timeout": 5}'
  pools:
    - pool_name: segment_uploads
      pool_slot: 4
      pool_description: Uploads to Segment
  variables:
    - variable_name: note
      variable_value: hello
    - variable_name: empty
      variable_value:
"""


def test_project_settings_file_reads_as_two_placeholder_connections():
    settings = read_settings(ROOT / "airflow_settings.yaml")

    assert [conn["conn_id"] for conn in settings.connections] == ["braze_currents_s3", "segment_default"]
    assert needs_stand_in(settings.connection("braze_currents_s3"), "s3")
    assert needs_stand_in(settings.connection("segment_default"), "segment")
    assert json.loads(settings.connection("segment_default")["extra"]) == {"region": "us"}


def test_astro_fields_become_airflow_connection_fields(tmp_path):
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(FULL)

    settings = read_settings(path)

    real = settings.connection("s3_real")
    assert real["login"] == "AKIAEXAMPLE" and real["host"] is None and real["port"] is None
    assert json.loads(real["extra"]) == {"region_name": "eu-west-1"}  # empty keys are left out
    assert settings.connection("from_uri") == {
        "conn_id": "from_uri",
        "uri": "http://user@example.invalid:8080",
    }
    assert settings.connection("http_with_port")["port"] == 8443
    assert settings.connection("http_with_port")["extra"] == '{"timeout": 5}'
    assert settings.pools == [("segment_uploads", 4, "Uploads to Segment")]
    assert settings.variables == {"note": "hello", "empty": ""}


@pytest.mark.parametrize(
    ("conn", "kind", "stand_in"),
    [
        (None, "s3", True),
        ({"conn_id": "x", "login": None, "extra": '{"region_name": "us-east-1"}'}, "s3", True),
        ({"conn_id": "x", "login": "AKIAEXAMPLE", "extra": None}, "s3", False),
        ({"conn_id": "x", "login": None, "extra": '{"endpoint_url": "http://127.0.0.1:9000"}'}, "s3", False),
        ({"conn_id": "x", "password": None, "extra": None}, "segment", True),
        ({"conn_id": "x", "password": "key", "extra": None}, "segment", False),
        ({"conn_id": "x", "uri": "segment://:key@"}, "segment", False),
    ],
)
def test_only_connections_without_credentials_get_a_local_stand_in(conn, kind, stand_in):
    assert needs_stand_in(conn, kind) is stand_in


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("airflow:\n  connections:\n    - conn_type: aws\n", "needs a conn_id"),
        ("airflow:\n  connections:\n    - conn_id: a\n", "conn_type is missing"),
        ("airflow:\n  connections:\n    - {conn_id: a, conn_type: http, conn_port: x}\n", "conn_port"),
        ("airflow:\n  connections:\n    - {conn_id: a, conn_type: http, conn_extra: '{no'}\n", "conn_extra"),
        ("airflow:\n  pools:\n    - {pool_name: p, pool_slot: many}\n", "pool_slot"),
        ("airflow:\n  variables:\n    - {variable_value: v}\n", "variable_name"),
        ("airflow: [1, 2]\n", "must be a mapping"),
    ],
)
def test_bad_entries_are_named_in_the_error(tmp_path, text, message):
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(text)

    with pytest.raises(SetupError, match=message):
        read_settings(path)
