"""Three Currents in one config give three DAGs, each with its own source, Segment, types and limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
currents:
  - name: web
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: web-currents}
  - name: app_eu
    start_date: "2026-11-15T06:00:00Z"
    source: {conn_id: braze_eu_s3, bucket: eu-currents, prefix: braze/eu}
    event_types: [users_campaigns_abort, users.messages.pushnotification.Send]
    segment: {conn_id: segment_eu, region: eu}
    chunk_events: 10000
    upload_concurrency: 2
    retries: 5
    max_active_runs: 1
    catchup: true
    message_id_prefix: "eu-"
  - name: email
    start_date: "2026-12-02T12:00:00Z"
    source: {conn_id: braze_email_s3, bucket: email-currents, prefix: exports}
    event_types: [users.messages.email.Open, users.messages.email.Click]
    segment: {conn_id: segment_email}
    chunk_events: 200000
    upload_concurrency: 8
    retries: 1
    max_active_runs: 8
    tags: [email]
"""
EXPECTED = {
    "web": {
        "start": datetime(2026, 12, 1, tzinfo=UTC),
        "aws": "braze_currents_s3",
        "bucket": "web-currents",
        "prefix": "currents",
        "types": 51,
        "segment": "segment_default",
        "region": "us",
        "chunk_events": 50_000,
        "concurrency": 4,
        "retries": 3,
        "max_active_runs": 4,
        "catchup": False,
    },
    "app_eu": {
        "start": datetime(2026, 11, 15, 6, tzinfo=UTC),
        "aws": "braze_eu_s3",
        "bucket": "eu-currents",
        "prefix": "braze/eu",
        "types": ["users.campaigns.Abort", "users.messages.pushnotification.Send"],
        "segment": "segment_eu",
        "region": "eu",
        "chunk_events": 10_000,
        "concurrency": 2,
        "retries": 5,
        "max_active_runs": 1,
        "catchup": True,
    },
    "email": {
        "start": datetime(2026, 12, 2, 12, tzinfo=UTC),
        "aws": "braze_email_s3",
        "bucket": "email-currents",
        "prefix": "exports",
        "types": ["users.messages.email.Open", "users.messages.email.Click"],
        "segment": "segment_email",
        "region": "us",
        "chunk_events": 200_000,
        "concurrency": 8,
        "retries": 1,
        "max_active_runs": 8,
        "catchup": False,
    },
}


@pytest.fixture
def dagbag(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_three_currents_give_three_dags(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == [
        "currents_to_segment_app_eu",
        "currents_to_segment_email",
        "currents_to_segment_web",
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_current_s_settings_reach_its_tasks(dagbag, name):
    want = EXPECTED[name]
    dag = dagbag.dags[f"currents_to_segment_{name}"]
    listing = dag.get_task("list_files")
    prepare = dag.get_task("prepare_chunks")
    upload = dag.get_task("upload_chunk").partial_kwargs

    assert dag.start_date == want["start"]
    assert (dag.max_active_runs, dag.catchup) == (want["max_active_runs"], want["catchup"])
    assert (listing.aws_conn_id, listing.bucket, listing.prefix) == (
        want["aws"],
        want["bucket"],
        want["prefix"],
    )
    if isinstance(want["types"], int):
        assert len(listing.event_types) == want["types"]
    else:
        assert listing.event_types == want["types"]
        assert prepare.event_types == want["types"]
    assert prepare.chunk_events == want["chunk_events"]
    assert (upload["segment_conn_id"], upload["region"], upload["concurrency"]) == (
        want["segment"],
        want["region"],
        want["concurrency"],
    )
    assert all(task.retries == want["retries"] for task in dag.tasks)
    assert {task.aws_conn_id for task in dag.tasks if task.task_id != "upload_chunk"} == {want["aws"]}
    for location in (prepare.staging, prepare.state, prepare.dead_letters):
        assert f"/braze_currents/{name}/" in location


def test_the_eu_current_posts_to_segment_s_eu_endpoint(dagbag, monkeypatch):
    from braze_currents_airflow.hooks import SegmentHook

    monkeypatch.setenv("AIRFLOW_CONN_SEGMENT_EU", json.dumps({"conn_type": "segment", "password": "wk-eu"}))
    upload = dagbag.dags["currents_to_segment_app_eu"].get_task("upload_chunk").partial_kwargs

    hook = SegmentHook(segment_conn_id=upload["segment_conn_id"], region=upload["region"])

    assert hook.endpoint() == "https://events.eu1.segmentapis.com/v1/batch"


def test_only_the_email_current_carries_its_extra_tag_and_prefix(dagbag):
    dags = dagbag.dags
    assert "email" in dags["currents_to_segment_email"].tags
    assert "email" not in dags["currents_to_segment_web"].tags
    assert dags["currents_to_segment_app_eu"].get_task("prepare_chunks").message_id_prefix == "eu-"
    assert dags["currents_to_segment_web"].get_task("prepare_chunks").message_id_prefix == ""
