"""The `segment` connection type: registered through the provider entry point, read by SegmentHook."""

from __future__ import annotations

import json

import pytest

from braze_currents_airflow.hooks import SegmentConnectionError, SegmentHook

EU = "https://events.eu1.segmentapis.com/v1/batch"
US = "https://api.segment.io/v1/batch"


@pytest.fixture(scope="module")
def segment_form():
    """The connection form metadata Airflow's API server gives the UI for the `segment` type."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    forms = {meta.connection_type: meta for meta in HookMetaService.hook_meta_data()}
    return forms.get("segment")


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_installing_the_project_registers_the_segment_connection_type():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    manager.initialize_providers_hooks()

    assert manager.providers["braze-currents-segment"].data["name"] == "Braze Currents to Segment"
    widget = manager.connection_form_widgets["extra__segment__region"]
    assert widget.hook_class_name == "braze_currents_airflow.hooks.SegmentHook"
    assert widget.field_name == "region"
    assert not widget.is_sensitive
    behaviour = manager.field_behaviours["segment"]
    assert behaviour["relabeling"]["password"] == "Write key"
    assert {"login", "schema", "port"} <= set(behaviour["hidden_fields"])


def test_the_ui_form_asks_for_the_write_key_in_the_password_field_and_a_region(segment_form):
    assert segment_form is not None, "the segment connection type is not registered: run `make venv`"
    assert segment_form.hook_name == "Segment"
    assert segment_form.standard_fields.password.title == "Write key"
    assert not segment_form.standard_fields.password.hidden
    assert segment_form.standard_fields.login.hidden
    assert set(segment_form.extra_fields) == {"region"}
    assert segment_form.extra_fields["region"]["schema"]["title"] == "Region"


@pytest.mark.parametrize(("typed", "endpoint"), [("eu", EU), ("us", US), (None, EU)])
def test_the_hook_reads_the_region_the_form_stores(segment_form, monkeypatch, typed, endpoint):
    (field,) = segment_form.extra_fields
    extra = {} if typed is None else {field: typed}
    set_connection(monkeypatch, "segment_form", conn_type="segment", password="wk-form", extra=extra)

    # The caller's region (segment.region of the config) applies only when the form left it empty.
    hook = SegmentHook(segment_conn_id="segment_form", region="eu")

    assert hook.endpoint() == endpoint


def test_the_hook_also_reads_the_prefixed_form_of_the_region_extra(monkeypatch):
    extra = {"extra__segment__region": "eu"}
    set_connection(monkeypatch, "segment_prefixed", conn_type="segment", password="k", extra=extra)

    assert SegmentHook(segment_conn_id="segment_prefixed", region="us").endpoint() == EU


def test_a_plain_connection_with_the_write_key_in_the_password_still_works(monkeypatch):
    set_connection(monkeypatch, "segment_plain", conn_type="generic", password="wk-plain")

    hook = SegmentHook(segment_conn_id="segment_plain", region="eu")
    client = hook.get_client()
    try:
        assert client.endpoint == EU
    finally:
        client.close()
    assert "wk-plain" not in hook.describe()


def test_a_host_overrides_the_region(monkeypatch):
    set_connection(
        monkeypatch, "segment_local", conn_type="segment", password="k", host="http://127.0.0.1", port=8765
    )

    assert SegmentHook(segment_conn_id="segment_local", region="eu").endpoint() == (
        "http://127.0.0.1:8765/v1/batch"
    )


def test_a_missing_connection_names_the_conn_id_and_how_to_add_it(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SEGMENT_NOWHERE", raising=False)

    with pytest.raises(SegmentConnectionError) as raised:
        SegmentHook(segment_conn_id="segment_nowhere").get_client()

    message = str(raised.value)
    assert "'segment_nowhere' is not defined" in message
    assert "AIRFLOW_CONN_SEGMENT_NOWHERE" in message
    assert "segment.conn_id" in message


def test_the_upload_task_fails_at_once_without_retries_when_the_connection_is_missing(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from braze_currents_airflow.operators import UploadChunkOperator

    task = UploadChunkOperator(
        task_id="upload_chunk",
        chunk={"chunk_id": 0, "name": "chunk-00000"},
        segment_conn_id="segment_nowhere",
        region="us",
        concurrency=1,
        current_name="demo",
        staging=str(tmp_path / "staging"),
        state=str(tmp_path / "state"),
        dead_letters=str(tmp_path / "dead_letters"),
    )

    with pytest.raises(AirflowFailException, match="'segment_nowhere' is not defined"):
        task.execute(context={})


def test_a_connection_without_write_key_is_refused(monkeypatch):
    set_connection(monkeypatch, "segment_empty", conn_type="segment", extra={"region": "eu"})

    with pytest.raises(SegmentConnectionError, match="no write key"):
        SegmentHook(segment_conn_id="segment_empty").get_client()
