"""Reruns and failures: every event reaches Segment once, whatever happens to the run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from braze_currents.localstack import LocalServices
from braze_currents.receiver import Fault
from tests.helpers import write_config, write_hostile_window

HOUR = datetime(2026, 11, 30, 7, tzinfo=UTC)


@pytest.fixture
def window(airflow_db, tmp_path, monkeypatch):
    """A generated window, the services and the DAG that exports it."""
    with LocalServices(tmp_path / "services") as services:
        for name, value in services.connection_env().items():
            monkeypatch.setenv(name, value)
        expected = write_hostile_window(services.s3_client(), services.bucket, HOUR, events_per_type=1500)
        config = write_config(
            tmp_path / "exports.yaml",
            bucket=services.bucket,
            workdir=tmp_path,
            on_dead_letters="warn",
            upload_concurrency=2,
        )
        monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
        from braze_currents.config import load_config
        from braze_currents_airflow.dag_factory import build_dag

        (current,) = load_config(config)
        dag = build_dag(current)
        yield services, dag, expected, tmp_path


def _report(workdir):
    return json.loads((workdir / "dead_letters" / "test" / "date=2026-11-30-07" / "report.json").read_text())


def test_rerunning_a_finished_window_sends_nothing_again(window):
    services, dag, expected, workdir = window
    assert dag.test(logical_date=HOUR).state == "success"
    requests_after_first = services.receiver.stats()["requests"]

    assert dag.test(logical_date=HOUR).state == "success"

    assert services.receiver.stats()["requests"] == requests_after_first
    assert services.receiver.stats()["duplicates"] == 0
    assert services.receiver.accepted_ids() == expected["expected_ids"]
    counts = _report(workdir)["counts"]
    assert counts["files_already_done"] == expected["files"]
    assert counts["sent"] == 0


def test_a_401_midway_fails_the_run_and_the_rerun_completes_without_duplicates(window):
    services, dag, expected, workdir = window
    services.receiver.inject(Fault(delay=0.001, times=3), Fault(status=401))  # 3 pass, then 401

    assert dag.test(logical_date=HOUR).state == "failed"
    partial = services.receiver.accepted_ids()
    assert 0 < len(partial) < len(expected["expected_ids"])

    assert dag.test(logical_date=HOUR).state == "success"
    assert services.receiver.accepted_ids() == expected["expected_ids"]
    assert services.receiver.stats()["duplicates"] == 0
    assert _report(workdir)["balanced"] is True
    # The failed run's chunks (personal data) go with the rerun's once the window is complete.
    assert not list((workdir / "staging").rglob("chunk-*"))


def test_force_resends_the_window_with_the_same_message_ids(window):
    services, dag, expected, workdir = window
    assert dag.test(logical_date=HOUR).state == "success"
    letters = workdir / "dead_letters" / "test" / "date=2026-11-30-07" / "prepare-dead-letters.ndjson"
    letters.unlink()  # a forced run must write its own, where the summary reads them

    assert dag.test(logical_date=HOUR, run_conf={"force": True}).state == "success"

    assert services.receiver.accepted_ids() == expected["expected_ids"]
    assert services.receiver.stats()["duplicates"] == len(expected["expected_ids"])
    assert _report(workdir)["balanced"] is True
