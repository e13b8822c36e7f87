"""The summary's outlet asset, whose events carry each window's counts, is stable per DAG."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Asset

from braze_currents.config import CurrentConfig


def current(dead_letters: str, name: str = "shop") -> CurrentConfig:
    return CurrentConfig(
        name=name,
        start_date=datetime(2026, 12, 1, tzinfo=UTC),
        source_conn_id="braze_currents_s3",
        bucket="bucket",
        prefix="currents",
        event_types=("users.messages.email.Send",),
        segment_conn_id="segment_default",
        region="us",
        staging="/tmp/staging",
        dead_letters=dead_letters,
        state="/tmp/state",
        mapping_file="/tmp/segment_mapping.yaml",
    )


def test_moving_the_reports_keeps_the_same_asset_and_each_current_has_its_own():
    from braze_currents_airflow.dag_factory import build_dag

    local = build_dag(current("/var/reports")).get_task("summarise")
    on_s3 = build_dag(current("s3://bucket/reports")).get_task("summarise")
    other = build_dag(current("/var/reports", name="app")).get_task("summarise")

    assert local.outlets == on_s3.outlets == [Asset(name="currents_to_segment_shop_reports")]
    assert other.outlets == [Asset(name="currents_to_segment_app_reports")]
