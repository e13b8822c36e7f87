"""One window through the real DAG (dag.test on SQLite) against moto server and the local receiver."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from braze_currents.config import load_config
from braze_currents.localstack import LocalServices
from tests.helpers import write_config, write_hostile_window

HOUR = datetime(2026, 11, 30, 4, tzinfo=UTC)


@pytest.fixture
def services(tmp_path, monkeypatch):
    with LocalServices(tmp_path / "services") as running:
        for name, value in running.connection_env().items():
            monkeypatch.setenv(name, value)
        yield running


def test_a_hostile_window_delivers_exactly_the_expected_message_ids(
    airflow_db, services, tmp_path, monkeypatch
):
    from braze_currents_airflow.dag_factory import build_dag

    expected = write_hostile_window(services.s3_client(), services.bucket, HOUR)
    config = write_config(
        tmp_path / "exports.yaml", bucket=services.bucket, workdir=tmp_path, on_dead_letters="warn"
    )
    monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
    (current,) = load_config(config)
    dag = build_dag(current)

    run = dag.test(logical_date=HOUR)

    assert run.state == "success"
    assert services.receiver.accepted_ids() == expected["expected_ids"]
    stats = services.receiver.stats()
    assert stats["duplicates"] == 0 and not stats["rejected"]
    window_dir = tmp_path / "dead_letters" / "test" / "date=2026-11-30-04"
    report = json.loads((window_dir / "report.json").read_text())
    assert report["balanced"] is True
    assert report["counts"]["events_read"] == expected["read"]
    assert report["counts"]["sent"] == len(expected["expected_ids"])
    letters = (window_dir / "dead_letters.ndjson").read_text()
    reasons = {json.loads(line)["reason"]: json.loads(line) for line in letters.splitlines()}
    assert reasons["event_over_32kb"]["id"] == expected["big_id"]
    assert reasons["truncated_file"]["key"] == expected["truncated_key"]
    assert not list((tmp_path / "staging").rglob("chunk-*.ndjson")), (
        "staged chunks are deleted once acknowledged"
    )
    assert not list((tmp_path / "staging").rglob(".*")), "no hidden file is left in staging"
    assert not [path for path in (tmp_path / "staging").rglob("*") if path.is_file()], "nor any other"
